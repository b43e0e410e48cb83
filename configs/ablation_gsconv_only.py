"""Ablation: the baseline U-Net with GSConv in encoder, bottleneck and decoder (no ECA).

python train.py --config configs/ablation_gsconv_only.py --workdir workdirs/ablation_gsconv_only
"""

import ml_collections

from bts_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config with ECA switched off."""
    config = default.get_config()
    config.model.eca_in = ""
    return config
