"""The paper's experiment (docs/design.md section 5) with the baseline U-Net, for comparison.

    python train.py --config configs/paper_unet.py --workdir workdirs/paper_unet \
        --config.data.data_dir=/path/to/brain_tumor_folder
"""

import ml_collections

from bts_jax.configs import paper


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper protocol for the baseline U-Net."""
    config = paper.get_config()
    config.model.gsconv_in = ""
    config.model.eca_in = ""
    return config
