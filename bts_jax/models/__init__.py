"""Segmentation models: U-Net with switchable GSConv and ECA blocks, and PyTorch weight import.

``bts_jax.models.nnx`` (the NNX U-Net of `bts_jax.models.interop.nnx`) is imported on first use,
so Linen users do not pay for Flax NNX at import time.
"""

import importlib

from bts_jax.models.factory import build_model, count_params, model_summary
from bts_jax.models.interop.milesial import import_milesial_unet
from bts_jax.models.interop.torch_io import read_state_dict
from bts_jax.models.layers import ECA, ConvBNAct, GSConv, channel_shuffle, eca_kernel_size
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


def __getattr__(name: str):
    """``bts_jax.models.nnx``: the interop NNX module, loaded lazily."""
    if name == "nnx":
        return importlib.import_module("bts_jax.models.interop.nnx")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
