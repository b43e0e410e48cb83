"""Imports PyTorch weights of milesial/Pytorch-UNet's ``UNet(..., bilinear=False)`` into bts_jax.

Their layout and the baseline bts_jax ``UNet`` (no GSConv, no ECA, ``upsample="transpose"``,
docs/design.md section 2) compute the same function:

* ``inc`` and ``down{k}`` (max pool 2, then DoubleConv: [Conv 3x3 no bias, BatchNorm2d, ReLU] x 2)
  are ``enc_0``, ``enc_k``; the last ``down`` is ``bottleneck`` (twice the last encoder width).
* ``up{k}`` (ConvTranspose2d(in, in // 2, 2, stride 2) with bias, concat ``[skip, up]``, DoubleConv)
  is ``up_{k-1}`` + ``dec_{k-1}``: both count from the deepest stage.
* ``outc`` (Conv 1x1 with bias) is ``head``.
* BatchNorm: PyTorch's defaults (eps 1e-5, momentum 0.1) are bts_jax's (eps 1e-5, Flax momentum
  0.9); ``running_mean``/``running_var`` become ``batch_stats`` ``mean``/``var``;
  ``num_batches_tracked`` has no counterpart and is skipped.
* milesial pads the upsampled tensor when a size is odd; bts_jax only accepts sizes that are
  multiples of 16 (for 4 stages), where that padding is empty, so both agree on every size bts_jax
  accepts.

Inputs are NCHW there and NHWC here: transpose images with ``x.transpose(0, 2, 3, 1)``.
``bilinear=True`` checkpoints are not importable (their decoder has no transposed convolution and
a different bottleneck width; bts_jax's bilinear mode is a resize followed by a 1x1 convolution).
"""

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from bts_jax.models.interop.torch_io import read_state_dict
from bts_jax.models.unet import UNet

# milesial's checkpoints (train.py) store the dataset's mask values next to the tensors.
METADATA_KEYS = frozenset({"mask_values"})

# In a DoubleConv's nn.Sequential, children 0 and 3 are the convolutions, 1 and 4 the BatchNorms.
_DOUBLE_CONV_CHILDREN = ((0, 1), (3, 4))


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight (O, I, kH, kW) -> Flax Conv kernel (kH, kW, I, O)."""
    return weight.transpose(2, 3, 1, 0)


def _conv_transpose_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ConvTranspose2d weight (I, O, kH, kW) -> Flax ConvTranspose kernel (kH, kW, I, O).

    PyTorch scatters ``x[i] * w[a]`` to output ``stride * i + a``. Flax's ``ConvTranspose``
    (``transpose_kernel=False``) correlates the stride-dilated input with the kernel, which sends
    ``x[i]`` to ``stride * i + a`` through ``kernel[k - 1 - a]``: the spatial axes are flipped.
    """
    return weight.transpose(2, 3, 0, 1)[::-1, ::-1]


def _identity(array: np.ndarray) -> np.ndarray:
    return array


class _Target:
    """Where one PyTorch tensor goes: its expected shape and its place in the Flax variables."""

    def __init__(
        self,
        shape: tuple[int, ...],
        collection: str,
        path: tuple[str, ...],
        convert: Callable[[np.ndarray], np.ndarray] = _identity,
    ):
        self.shape = shape
        self.collection = collection
        self.path = path
        self.convert = convert


def _double_conv_targets(
    prefix: str, block: str, in_features: int, features: int
) -> dict[str, _Target]:
    targets = {}
    for i, (conv, bn) in enumerate(_DOUBLE_CONV_CHILDREN):
        c_in = in_features if i == 0 else features
        targets[f"{prefix}.{conv}.weight"] = _Target(
            (features, c_in, 3, 3), "params", (block, f"conv_{i}", "conv", "kernel"), _conv_kernel
        )
        for name, collection, flax_name in (
            ("weight", "params", "scale"),
            ("bias", "params", "bias"),
            ("running_mean", "batch_stats", "mean"),
            ("running_var", "batch_stats", "var"),
        ):
            targets[f"{prefix}.{bn}.{name}"] = _Target(
                (features,), collection, (block, f"conv_{i}", "bn", flax_name)
            )
    return targets


def milesial_targets(
    features: Sequence[int], in_channels: int, num_classes: int
) -> dict[str, _Target]:
    """Lists the tensors of a milesial ``UNet`` state_dict and where each goes in a bts_jax UNet.

    Args:
      features: encoder widths (milesial: ``(64, 128, 256, 512)``); the bottleneck has twice the
        last width.
      in_channels: milesial's ``n_channels``.
      num_classes: milesial's ``n_classes``.

    Returns:
      ``{torch_name: target}`` in milesial's state_dict order, ``num_batches_tracked`` excluded.
    """
    widths = [*features, 2 * features[-1]]
    stages = len(features)
    targets = _double_conv_targets("inc.double_conv", "enc_0", in_channels, widths[0])
    for k in range(1, stages + 1):
        block = "bottleneck" if k == stages else f"enc_{k}"
        targets |= _double_conv_targets(
            f"down{k}.maxpool_conv.1.double_conv", block, widths[k - 1], widths[k]
        )
    for k in range(1, stages + 1):
        c_in, c_out = widths[stages - k + 1], widths[stages - k]
        targets[f"up{k}.up.weight"] = _Target(
            (c_in, c_out, 2, 2), "params", (f"up_{k - 1}", "conv", "kernel"), _conv_transpose_kernel
        )
        targets[f"up{k}.up.bias"] = _Target((c_out,), "params", (f"up_{k - 1}", "conv", "bias"))
        targets |= _double_conv_targets(f"up{k}.conv.double_conv", f"dec_{k - 1}", c_in, c_out)
    targets["outc.conv.weight"] = _Target(
        (num_classes, widths[0], 1, 1), "params", ("head", "kernel"), _conv_kernel
    )
    targets["outc.conv.bias"] = _Target((num_classes,), "params", ("head", "bias"))
    return targets


def _shape_of(state_dict: Mapping[str, Any], name: str, rank: int, source: str) -> tuple:
    if name not in state_dict:
        raise ValueError(
            f"{source}: no tensor {name!r}, so the network's widths cannot be inferred; is this a "
            "milesial/Pytorch-UNet UNet state_dict? Pass features=, in_channels= and "
            "num_classes= to see which tensors do not fit."
        )
    shape = np.shape(state_dict[name])
    if len(shape) != rank:
        raise ValueError(f"{source}: tensor {name!r} has shape {shape}, expected rank {rank}.")
    return tuple(int(n) for n in shape)


def _infer_config(state_dict: Mapping[str, Any], source: str) -> tuple[tuple[int, ...], int, int]:
    """Reads (features, in_channels, num_classes) from the tensors' shapes."""
    if any(re.fullmatch(r"up\d+\.conv\.double_conv\.0\.weight", n) for n in state_dict) and not any(
        re.fullmatch(r"up\d+\.up\.weight", n) for n in state_dict
    ):
        raise ValueError(
            f"{source}: the state_dict has no up*.up.weight: it looks like a bilinear=True "
            "milesial UNet, which bts_jax cannot import (only bilinear=False, transposed-conv "
            "upsampling, maps onto bts_jax's UNet)."
        )
    width, in_channels, _, _ = _shape_of(state_dict, "inc.double_conv.0.weight", 4, source)
    widths = [width]
    k = 1
    while (name := f"down{k}.maxpool_conv.1.double_conv.0.weight") in state_dict:
        widths.append(_shape_of(state_dict, name, 4, source)[0])
        k += 1
    if len(widths) < 2:
        raise ValueError(f"{source}: no tensor 'down1.maxpool_conv.1.double_conv.0.weight'.")
    num_classes = _shape_of(state_dict, "outc.conv.weight", 4, source)[0]
    return tuple(widths[:-1]), in_channels, num_classes


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def import_milesial_unet(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    features: Sequence[int] | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> tuple[UNet, dict[str, dict]]:
    """Builds the bts_jax baseline UNet that computes milesial/Pytorch-UNet's ``UNet``.

    Every tensor of the state_dict is mapped exactly once: convolution kernels OIHW -> HWIO,
    transposed-convolution kernels (I, O, kH, kW) -> (kH, kW, I, O) with flipped spatial axes,
    BatchNorm ``weight``/``bias`` -> ``params`` ``scale``/``bias`` and ``running_mean``/
    ``running_var`` -> ``batch_stats`` ``mean``/``var``. ``num_batches_tracked`` and the
    ``mask_values`` entry milesial's ``train.py`` adds are skipped. Use the model in eval mode
    (``train=False``) to reproduce PyTorch's ``model.eval()`` outputs, with NHWC inputs.

    Example::

      model, variables = import_milesial_unet("unet_carvana_scale0.5_epoch2.pth")
      logits = model.apply(variables, images_nhwc, train=False)  # (B, H, W, n_classes)

    Args:
      source: a ``.pth`` written by ``torch.save(model.state_dict(), path)`` (read without
        PyTorch, see :func:`bts_jax.models.interop.torch_io.read_state_dict`), an ``.npz`` of
        ``{name: array}``, or such a mapping already in memory.
      features: encoder widths to check the tensors against; ``None`` infers them from the
        shapes (milesial's model: ``(64, 128, 256, 512)``).
      in_channels: milesial's ``n_channels`` (1 or 3); ``None`` infers it.
      num_classes: milesial's ``n_classes``; ``None`` infers it.
      dtype: computation dtype of the returned module; parameters are float32.

    Returns:
      ``(model, variables)``: an unbound baseline ``UNet`` (``upsample="transpose"``, no GSConv,
      no ECA) and ``{"params": ..., "batch_stats": ...}`` of float32 ``jnp`` arrays.

    Raises:
      ValueError: naming the first tensor whose name or shape does not fit (with the tensors
        left unmapped on both sides), a missing tensor, a bilinear=True checkpoint, or widths
        whose bottleneck is not twice the last encoder width.
    """
    source_name = os.fspath(source) if not isinstance(source, Mapping) else "state_dict"
    state_dict = source if isinstance(source, Mapping) else read_state_dict(source)
    state_dict = {k: v for k, v in state_dict.items() if k not in METADATA_KEYS}

    if features is None or in_channels is None or num_classes is None:
        inferred = _infer_config(state_dict, source_name)
        features = inferred[0] if features is None else features
        in_channels = inferred[1] if in_channels is None else in_channels
        num_classes = inferred[2] if num_classes is None else num_classes
    features = tuple(int(f) for f in features)
    targets = milesial_targets(features, in_channels, num_classes)
    batch_norms = {name.rsplit(".", 1)[0] for name in targets if name.endswith(".running_mean")}

    def skipped(name: str) -> bool:
        prefix, _, leaf = name.rpartition(".")
        return leaf == "num_batches_tracked" and prefix in batch_norms

    # Listed in every error, so one message shows a renamed tensor from both sides.
    extra = [n for n in state_dict if n not in targets and not skipped(n)]
    missing = [n for n in targets if n not in state_dict]
    config = f"features={features}, in_channels={in_channels}, num_classes={num_classes}"
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, value in state_dict.items():
        if skipped(name):
            continue
        target = targets.get(name)
        shape = tuple(np.shape(value))
        if target is None or shape != target.shape:
            why = (
                "is not a tensor of the milesial UNet"
                if target is None
                else f"has shape {shape}, expected {target.shape}"
            )
            raise ValueError(
                f"{source_name}: tensor {name!r} {why} ({config}). State_dict tensors that fit "
                f"no model tensor: {extra}; model tensors missing from the state_dict: "
                f"{missing or 'none'}."
            )
        array = target.convert(np.asarray(value, dtype=np.float32))
        _set(variables[target.collection], target.path, jnp.asarray(array))
    if missing:
        raise ValueError(
            f"{source_name}: the state_dict lacks {len(missing)} tensor(s) of the milesial UNet "
            f"({config}): {missing}."
        )
    model = UNet(features=features, num_classes=num_classes, upsample="transpose", dtype=dtype)
    return model, variables
