"""A PyTorch twin of bts_jax's U-Net, for the side-by-side benchmark (benchmarks/vs_pytorch.py).

Same layers, widths and switches as ``bts_jax.models.UNet`` (docs/design.md sections 1 and 2), in
PyTorch's native NCHW layout: ConvBNAct (conv without bias, padding k // 2, BatchNorm eps 1e-5
momentum 0.1, activation), GSConv (dense conv -> depthwise 5x5 on the dense half -> concat ->
channel shuffle, Mish) after the GSConv authors' PyTorch code, ECA (global average pool -> 1D conv
across channels -> sigmoid -> rescale) after the ECA-Net authors' code, 2x2 stride-2 transposed
convolutions up, and a 1x1 head. :func:`load_flax_variables` copies a Flax model's parameters and
BatchNorm statistics into it, so both frameworks compute the same function from the same weights.

Only the benchmark imports this file; PyTorch is never a dependency of the library.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "mish": nn.Mish, "silu": nn.SiLU}


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, padding k // 2) -> BatchNorm2d -> activation (``None``: identity)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, groups: int = 1, act="relu"):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1),
            ACTIVATIONS[act]() if act else nn.Identity(),
        )


def channel_shuffle(y: torch.Tensor, mode: str) -> torch.Tensor:
    """Permutes the channels of (B, C, H, W) like ``bts_jax.models.channel_shuffle``."""
    if mode == "none":
        return y
    b, c, h, w = y.shape
    if mode == "interleave":  # out[2i + g] = y[g * C/2 + i]
        return y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
    if mode == "legacy":  # out[g * C/2 + i] = y[2i + g]
        return y.view(b, c // 2, 2, h, w).transpose(1, 2).reshape(b, c, h, w)
    raise ValueError(f"Unknown channel shuffle mode {mode!r}.")


class GSConv(nn.Module):
    """Dense ConvBNAct to half the channels, depthwise 5x5 ConvBNAct of it, concat, shuffle."""

    def __init__(self, c_in: int, c_out: int, act: str = "mish", shuffle: str = "interleave"):
        super().__init__()
        half = c_out // 2
        self.dense = ConvBNAct(c_in, half, 3, act=act)
        self.depthwise = ConvBNAct(half, half, 5, groups=half, act=act)
        self.shuffle = shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, C_in, H, W) to (B, C_out, H, W)."""
        x1 = self.dense(x)
        return channel_shuffle(torch.cat([x1, self.depthwise(x1)], dim=1), self.shuffle)


class ECA(nn.Module):
    """Efficient Channel Attention: sigmoid(conv1d over channels of the spatial mean) * x."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweights the channels of (B, C, H, W)."""
        pooled = x.mean(dim=(2, 3))  # (B, C)
        weights = torch.sigmoid(self.conv(pooled[:, None, :]))[:, 0]  # (B, C)
        return x * weights[:, :, None, None]


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (ConvBNAct+ReLU or GSConv), then optional ECA."""

    def __init__(self, c_in, c_out, use_gsconv, use_eca, eca_kernel, act, shuffle):
        super().__init__()
        if use_gsconv:
            self.conv_0 = GSConv(c_in, c_out, act, shuffle)
            self.conv_1 = GSConv(c_out, c_out, act, shuffle)
        else:
            self.conv_0 = ConvBNAct(c_in, c_out)
            self.conv_1 = ConvBNAct(c_out, c_out)
        self.eca = ECA(eca_kernel(c_out)) if use_eca else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, C_in, H, W) to (B, C_out, H, W)."""
        x = self.conv_1(self.conv_0(x))
        return self.eca(x) if self.eca is not None else x


class UNet(nn.Module):
    """The U-Net of docs/design.md section 2 (transposed-conv upsampling), NCHW.

    Args:
      features: encoder widths; the bottleneck has twice the last.
      gsconv_in: subset of {"encoder", "bottleneck", "decoder"} whose convolutions are GSConv.
      eca_in: subset of {"encoder", "bottleneck", "decoder"} whose blocks end with ECA.
      eca_kernel: function channels -> ECA kernel size (bts_jax's ``eca_kernel_size``).
      gsconv_act: GSConv activation.
      gsconv_shuffle: GSConv channel shuffle mode.
      num_classes: output channels.
      in_channels: input channels.
    """

    def __init__(
        self,
        features: Sequence[int],
        gsconv_in: Sequence[str],
        eca_in: Sequence[str],
        eca_kernel,
        gsconv_act: str = "mish",
        gsconv_shuffle: str = "interleave",
        num_classes: int = 1,
        in_channels: int = 1,
    ):
        super().__init__()
        if "skip" in eca_in:
            raise ValueError("The PyTorch twin does not implement eca_in='skip'.")

        def block(c_in, c_out, place):
            return ConvBlock(
                c_in,
                c_out,
                place in gsconv_in,
                place in eca_in,
                eca_kernel,
                gsconv_act,
                gsconv_shuffle,
            )

        self.enc = nn.ModuleList()
        c = in_channels
        for f in features:
            self.enc.append(block(c, f, "encoder"))
            c = f
        self.bottleneck = block(c, 2 * c, "bottleneck")
        c = 2 * c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for f in features[::-1]:
            self.up.append(nn.ConvTranspose2d(c, f, 2, stride=2))
            self.dec.append(block(2 * f, f, "decoder"))
            c = f
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images (B, C_in, H, W) to logits (B, num_classes, H, W)."""
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.dec, skips[::-1], strict=True):
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice pooled over the batch (smooth 1), as ``train.losses.segmentation_loss``.

    Args:
      logits: (B, 1, H, W) tumour logits.
      mask: (B, H, W) labels in {0, 1}.

    Returns:
      The scalar loss (every example valid, both weights 1).
    """
    x = logits[:, 0].float()
    target = mask.float()
    bce = F.binary_cross_entropy_with_logits(x, target)
    probs = torch.sigmoid(x)
    dice = (2 * (probs * target).sum() + 1) / (probs.sum() + target.sum() + 1)
    return bce + 1 - dice


# ----------------------------------------------------------------------------- weight transfer


def _copy(target: torch.Tensor, value: np.ndarray, where: str) -> None:
    value = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
    if tuple(target.shape) != tuple(value.shape):
        raise ValueError(f"{where}: torch shape {tuple(target.shape)} != {tuple(value.shape)}")
    with torch.no_grad():
        target.copy_(value)


def _conv_bn(seq: ConvBNAct, params: Mapping, stats: Mapping, where: str) -> None:
    # Flax kernels are (kh, kw, in / groups, out); PyTorch's are (out, in / groups, kh, kw).
    _copy(seq[0].weight, np.transpose(params["conv"]["kernel"], (3, 2, 0, 1)), where + "/conv")
    _copy(seq[1].weight, params["bn"]["scale"], where + "/bn/scale")
    _copy(seq[1].bias, params["bn"]["bias"], where + "/bn/bias")
    _copy(seq[1].running_mean, stats["bn"]["mean"], where + "/bn/mean")
    _copy(seq[1].running_var, stats["bn"]["var"], where + "/bn/var")


def _block(block: ConvBlock, params: Mapping, stats: Mapping, where: str) -> None:
    for i in range(2):
        name = f"conv_{i}"
        torch_conv, p, s = getattr(block, name), params[name], stats[name]
        if isinstance(torch_conv, GSConv):
            _conv_bn(torch_conv.dense, p["dense"], s["dense"], f"{where}/{name}/dense")
            _conv_bn(torch_conv.depthwise, p["depthwise"], s["depthwise"], f"{where}/{name}/dw")
        else:
            _conv_bn(torch_conv, p, s, f"{where}/{name}")
    if block.eca is not None:
        # Flax's 1D kernel is (k, in=1, out=1); PyTorch's Conv1d weight is (out=1, in=1, k).
        _copy(block.eca.conv.weight, params["eca"]["conv"]["kernel"][:, 0, 0][None, None], where)


def load_flax_variables(model: UNet, variables: Mapping[str, Any]) -> None:
    """Copies a bts_jax UNet's ``{"params", "batch_stats"}`` into ``model`` in place.

    Args:
      model: the PyTorch twin, built with the same widths and switches.
      variables: the Flax variables (arrays of any kind convertible by ``np.asarray``).

    Raises:
      ValueError: naming the parameter whose shape does not match.
    """
    params = _to_numpy(variables["params"])
    stats = _to_numpy(variables.get("batch_stats", {}))
    for i, block in enumerate(model.enc):
        _block(block, params[f"enc_{i}"], stats[f"enc_{i}"], f"enc_{i}")
    _block(model.bottleneck, params["bottleneck"], stats["bottleneck"], "bottleneck")
    for i, (up, block) in enumerate(zip(model.up, model.dec, strict=True)):
        kernel = params[f"up_{i}"]["conv"]["kernel"]  # (2, 2, in, out)
        # Flax's ConvTranspose (transpose_kernel=False) reads its kernel spatially flipped
        # relative to PyTorch's ConvTranspose2d, whose weight is (in, out, kh, kw).
        _copy(up.weight, np.transpose(kernel[::-1, ::-1], (2, 3, 0, 1)), f"up_{i}/conv")
        _copy(up.bias, params[f"up_{i}"]["conv"]["bias"], f"up_{i}/bias")
        _block(block, params[f"dec_{i}"], stats[f"dec_{i}"], f"dec_{i}")
    _copy(model.head.weight, np.transpose(params["head"]["kernel"], (3, 2, 0, 1)), "head")
    _copy(model.head.bias, params["head"]["bias"], "head/bias")


def _to_numpy(tree):
    if isinstance(tree, Mapping):
        return {key: _to_numpy(value) for key, value in tree.items()}
    return np.asarray(tree, dtype=np.float32)
