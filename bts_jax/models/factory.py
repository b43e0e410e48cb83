"""Turns a model ConfigDict into a module, and reports a model's size and cost.

Modules never read configs: this is the one place where config fields become module arguments.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bts_jax.models.unet import ECA_PLACES, GSCONV_PLACES, UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def parse_places(value: str | Sequence[str], allowed: frozenset[str], setting: str) -> tuple:
    """Parses a comma-separated list of block names ("" = none) from a config field.

    Args:
      value: e.g. ``"encoder,decoder"`` or a sequence of names.
      allowed: the names the field accepts.
      setting: the config field's name, for the error message.

    Returns:
      A sorted tuple of unique names.

    Raises:
      ValueError: naming ``setting`` when a name is unknown.
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    names = {name.strip() for name in names if name.strip()}
    unknown = names - allowed
    if unknown:
        raise ValueError(
            f"{setting} has unknown entries {sorted(unknown)}; allowed: {sorted(allowed)}."
        )
    return tuple(sorted(names))


def parse_dtype(name: str, setting: str = "config.dtype") -> jnp.dtype:
    """Returns the JAX dtype called ``name`` ("float32" or "bfloat16"); errors name ``setting``."""
    if name not in DTYPES:
        raise ValueError(f"{setting}={name!r}; expected one of {sorted(DTYPES)}.")
    return DTYPES[name]


def build_model(model_config: ml_collections.ConfigDict, *, dtype: str = "float32") -> UNet:
    """Builds the segmentation model described by ``config.model``.

    Every block the config names (``gsconv_in``, ``eca_in``, ``conv``, ``attention``) is built
    once here on a tiny abstract input, so an unknown name, an import path that fails or a block
    that breaks its shape contract is reported now, naming its config field; so is a norm
    (``norm``) that is unknown or does not fit a layer's channel count.

    Args:
      model_config: the ``model`` field of an experiment config (see ``configs/default.py``).
        Fields added after a config was written (``conv``, ``attention``, ``se_reduction``,
        ``depthwise_impl``, ``norm``) take the values that keep its old meaning.
      dtype: computation dtype name, ``"float32"`` or ``"bfloat16"``; parameters stay float32.

    Returns:
      An unbound ``UNet``.

    Raises:
      ValueError: naming the config field that holds an invalid value.
    """
    if model_config.name != "unet":
        raise ValueError(f"config.model.name={model_config.name!r}; only 'unet' is available.")
    features = tuple(int(f) for f in model_config.features)
    gsconv_in = parse_places(model_config.gsconv_in, GSCONV_PLACES, "config.model.gsconv_in")
    eca_in = parse_places(model_config.eca_in, ECA_PLACES, "config.model.eca_in")
    model = UNet(
        features=features,
        num_classes=int(model_config.num_classes),
        upsample=model_config.upsample,
        gsconv_in=gsconv_in,
        eca_in=eca_in,
        conv=model_config.get("conv", ""),
        attention=model_config.get("attention", ""),
        gsconv_act=model_config.gsconv_act,
        gsconv_shuffle=model_config.gsconv_shuffle,
        # Configs written before the field existed computed depthwise convolutions "auto"matically.
        depthwise_impl=model_config.get("depthwise_impl", "auto"),
        upsample_impl=model_config.get("upsample_impl", "auto"),
        eca_kernel_size=int(model_config.eca_kernel_size) or None,
        se_reduction=int(model_config.get("se_reduction", 16)),
        # Configs written before the field existed had BatchNorm everywhere.
        norm=model_config.get("norm", "batch"),
        # Configs written before the field existed ran XLA's convolutions.
        conv_impl=model_config.get("conv_impl", "xla"),
        dtype=parse_dtype(dtype),
        param_dtype=jnp.float32,
    )
    # Surface bad switch values now, with the config's names, rather than at the first trace.
    try:
        model.check_blocks()
    except (ValueError, TypeError) as error:
        # UNet's fields carry the config's names, so the message can point at the config.
        raise type(error)(str(error).replace("UNet.", "config.model.")) from error.__cause__
    return model


def count_params(params: Any) -> int:
    """Returns the number of scalars in a parameter pytree (batch statistics excluded)."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def model_summary(
    model: UNet, image_size: int, *, batch_size: int = 1, in_channels: int = 1
) -> dict[str, float]:
    """Counts a model's parameters and the FLOPs of one eval-mode forward pass.

    FLOPs come from XLA's cost analysis of the compiled forward pass (a multiply-add counts as 2),
    so they include everything XLA executes (BatchNorm, activations, pooling), not only the
    convolutions. They are the model's own FLOPs, the same whatever the formulation: counted with
    grouped depthwise convolutions, ``nn.ConvTranspose`` up-convolutions and XLA's convolutions
    whatever ``model.depthwise_impl``, ``model.upsample_impl`` and ``model.conv_impl`` are.
    No array of the full input size is allocated for the parameter count.

    Args:
      model: the module to measure.
      image_size: input height and width.
      batch_size: images per forward pass.
      in_channels: input channels (1 for grayscale MRI).

    Returns:
      ``{"params": ..., "flops": ..., "gflops_per_image": ...}``.
    """
    model.check_input_shape((batch_size, image_size, image_size, in_channels))
    # XLA's own convolutions: its cost analysis counts nothing inside a custom call (oneDNN).
    model = model.clone(depthwise_impl="grouped", upsample_impl="conv_transpose", conv_impl="xla")
    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, in_channels), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False)
    )

    def forward(variables, x):
        return model.apply(variables, x, train=False)

    cost = jax.jit(forward).lower(variables, x).compile().cost_analysis()
    if isinstance(cost, list):  # Older JAX returns one dict per computation.
        cost = cost[0]
    flops = float(cost["flops"])
    return {
        "params": count_params(variables["params"]),
        "flops": flops,
        "gflops_per_image": flops / batch_size / 1e9,
    }
