"""The baseline U-Net: plain ConvBNAct(3x3, ReLU) blocks, no GSConv, no ECA.

python train.py --config configs/unet_baseline.py --workdir workdirs/unet_baseline
"""

import ml_collections

from bts_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config with every GSConv and ECA switch off."""
    config = default.get_config()
    config.model.gsconv_in = ""
    config.model.eca_in = ""
    return config
