"""Segmentation models: a U-Net whose blocks are chosen by name, and PyTorch weight import.

Attention and convolution blocks are registered by name (`register_attention`,
`register_conv`; the zoo: `attention_names()`, `conv_names()`) or named by import path in a
config (docs/extending.md); so are norms (`register_norm`, `norm_names()`; ``config.model.norm``).
The head's initial bias prior (``config.model.output_bias_prior``) is `bts_jax.models.head`.

``bts_jax.models.nnx`` (the NNX U-Net of `bts_jax.models.interop.nnx`) is imported on first use,
so Linen users do not pay for Flax NNX at import time.
"""

import importlib

from bts_jax.models.attention import CBAM, SCSE, CoordinateAttention, SqueezeExcite
from bts_jax.models.convs import DepthwiseSeparableConv, GhostConv
from bts_jax.models.factory import build_model, count_params, model_summary
from bts_jax.models.interop.milesial import import_milesial_unet
from bts_jax.models.interop.torch_io import read_state_dict
from bts_jax.models.layers import ECA, ConvBNAct, GSConv, channel_shuffle, eca_kernel_size
from bts_jax.models.norms import norm_names, register_norm
from bts_jax.models.onednn.ffi import CONV_IMPLS, resolve_conv_impl
from bts_jax.models.registry import (
    BlockOptions,
    attention_names,
    conv_names,
    register_attention,
    register_conv,
)
from bts_jax.models.unet import UNet

__all__ = [
    "CONV_IMPLS",
    "CBAM",
    "ECA",
    "SCSE",
    "BlockOptions",
    "ConvBNAct",
    "CoordinateAttention",
    "DepthwiseSeparableConv",
    "GSConv",
    "GhostConv",
    "SqueezeExcite",
    "UNet",
    "attention_names",
    "build_model",
    "channel_shuffle",
    "conv_names",
    "count_params",
    "eca_kernel_size",
    "import_milesial_unet",
    "model_summary",
    "norm_names",
    "read_state_dict",
    "register_attention",
    "register_conv",
    "register_norm",
    "resolve_conv_impl",
]


def __getattr__(name: str):
    """``bts_jax.models.nnx``: the interop NNX module, loaded lazily."""
    if name == "nnx":
        return importlib.import_module("bts_jax.models.interop.nnx")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
