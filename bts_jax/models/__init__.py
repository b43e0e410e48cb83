"""Segmentation models: U-Net with switchable GSConv and ECA blocks, and PyTorch weight import."""

from bts_jax.models.factory import build_model, count_params, model_summary
from bts_jax.models.layers import ECA, ConvBNAct, GSConv, channel_shuffle, eca_kernel_size
from bts_jax.models.milesial import import_milesial_unet
from bts_jax.models.torch_io import read_state_dict
from bts_jax.models.unet import UNet

__all__ = [
    "ECA",
    "ConvBNAct",
    "GSConv",
    "UNet",
    "build_model",
    "channel_shuffle",
    "count_params",
    "eca_kernel_size",
    "import_milesial_unet",
    "model_summary",
    "read_state_dict",
]
