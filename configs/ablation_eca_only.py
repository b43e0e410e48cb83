"""Ablation: the baseline U-Net plus ECA in encoder, bottleneck and decoder (no GSConv).

python train.py --config configs/ablation_eca_only.py --workdir workdirs/ablation_eca_only
"""

import ml_collections

from bts_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config with GSConv switched off."""
    config = default.get_config()
    config.model.gsconv_in = ""
    return config
