"""The building blocks of the improved U-Net: ConvBNAct, GSConv with channel shuffle, and ECA.

All tensors are NHWC. Each module takes ``dtype`` (computation) and ``param_dtype`` (parameters,
float32 by default). Norm statistics are always computed (and BatchNorm's stored) in float32: Flax
promotes the statistics to at least float32 whatever ``dtype`` is, and ``param_dtype`` keeps the
running averages in float32. The norm is BatchNorm unless a block's ``norm`` names another
(`bts_jax.models.norms`).
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# The formulations live in their own module; these names stay importable from here.
from bts_jax.models.formulations import (  # noqa: F401
    DEPTHWISE_IMPLS,
    UPSAMPLE_IMPLS,
    UpConvGemm,
    block_diagonal_conv,
    resolve_depthwise_impl,
    resolve_upsample_impl,
    shifted_depthwise_conv,
)
from bts_jax.models.norms import (  # noqa: F401  (importable from here as before the registry)
    BATCH_NORM_EPSILON,
    BATCH_NORM_MOMENTUM,
    DEFAULT_NORM,
    apply_norm,
    has_norm,
)
from bts_jax.models.onednn.ffi import onednn_conv_general_dilated, resolve_conv_impl

# The activations a block can use. "mish" is the GSConv authors' paper-era default.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "mish": jax.nn.mish,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}

SHUFFLE_MODES = ("interleave", "legacy", "none")


def get_activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function called ``name`` (``None`` means identity).

    Args:
      name: one of ``"mish"``, ``"silu"``, ``"relu"``, or ``None``.

    Raises:
      ValueError: for an unknown name.
    """
    if name is None:
        return lambda x: x
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def channel_shuffle(x: jax.Array, mode: str) -> jax.Array:
    """Permutes the channels of a GSConv output (the concat of a dense and a depthwise half).

    With C channels and H = C // 2 (docs/design.md section 1):

    * ``"interleave"``: ``out[o] = x[(o % 2) * H + o // 2]``; dense and depthwise channels alternate
      (C=8: ``[0, 4, 1, 5, 2, 6, 3, 7]``). The GSConv authors' code since 2023.
    * ``"legacy"``: ``out[o] = x[2 * (o % H) + o // H]``; even channels first, then odd ones
      (C=8: ``[0, 2, 4, 6, 1, 3, 5, 7]``). The 2022 code. It is the inverse permutation of
      ``"interleave"``.
    * ``"none"``: identity (plain concat, an ablation).

    Args:
      x: array of shape (..., C) with C even.
      mode: ``"interleave"``, ``"legacy"`` or ``"none"``.

    Returns:
      Array of the same shape and dtype as ``x``.

    Raises:
      ValueError: for an unknown mode or an odd channel count.
    """
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"Unknown channel shuffle mode {mode!r}; expected one of {SHUFFLE_MODES}.")
    channels = x.shape[-1]
    if channels % 2:
        raise ValueError(f"channel_shuffle needs an even channel count, got {channels}.")
    if mode == "none":
        return x
    half = channels // 2
    lead = x.shape[:-1]
    if mode == "interleave":
        # (..., 2, H) -> (..., H, 2): output channel 2h + g reads input channel g * H + h.
        return x.reshape(*lead, 2, half).swapaxes(-1, -2).reshape(*lead, channels)
    # (..., H, 2) -> (..., 2, H): output channel g * H + h reads input channel 2h + g.
    return x.reshape(*lead, half, 2).swapaxes(-1, -2).reshape(*lead, channels)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """Returns ECA's adaptive 1D kernel size for a channel count (ECA-Net authors' rule).

    ``t = int(abs((log2(C) + b) / gamma))``; the kernel size is ``t`` if odd, else ``t + 1``.
    For C = 64, 128, 256, 512, 1024 this gives 3, 5, 5, 5, 5.

    Args:
      channels: number of channels C >= 1.
      gamma: the rule's slope.
      b: the rule's offset.

    Returns:
      An odd kernel size >= 1.
    """
    if channels < 1:
        raise ValueError(f"eca_kernel_size needs channels >= 1, got {channels}.")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ConvBNAct(nn.Module):
    """Convolution without bias, symmetric k // 2 padding, a norm (BatchNorm), then an activation.

    With ``norm="none"`` the convolution has a bias instead, as nothing after it shifts it.

    Attributes:
      features: number of output channels.
      kernel_size: square kernel size.
      strides: stride in both spatial dimensions.
      groups: ``feature_group_count`` of the convolution (``features`` for depthwise).
      act: activation name (``"relu"``, ``"mish"``, ``"silu"``) or ``None`` for none.
      depthwise_impl: how a depthwise convolution is computed, one of ``DEPTHWISE_IMPLS``.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      norm: the norm after the convolution (`bts_jax.models.norms`), at the path ``bn``.
      conv_impl: how a dense (``groups == 1``) convolution is computed: ``"auto"``, ``"xla"`` or
        ``"onednn"`` (``onednn.ffi.CONV_IMPLS``); the same function either way.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    groups: int = 1
    act: str | None = "relu"
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm: str = DEFAULT_NORM
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies the block.

        Args:
          x: input of shape (B, H, W, C_in).
          train: BatchNorm uses batch statistics (and updates the running ones) when True.

        Returns:
          Output of shape (B, H / strides, W / strides, features).
        """
        activation = get_activation(self.act)
        if self.groups > 1:
            impl = resolve_depthwise_impl(self.depthwise_impl)
            conv_fn = {"dense": block_diagonal_conv, "shifted": shifted_depthwise_conv}.get(impl)
        elif resolve_conv_impl(self.conv_impl) == "onednn":
            conv_fn = onednn_conv_general_dilated
        else:
            conv_fn = None
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            # k // 2 on every side, as PyTorch's Conv2d(padding=k // 2) in the authors' code. XLA's
            # "SAME" pads (0, 1) for stride 2 on even sizes, shifting every output by one pixel.
            padding=((self.kernel_size // 2,) * 2,) * 2,
            feature_group_count=self.groups,
            conv_general_dilated=conv_fn,
            use_bias=not has_norm(self.norm),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        x = apply_norm(
            self.norm, x, train=train, name="bn", dtype=self.dtype, param_dtype=self.param_dtype
        )
        return activation(x)


class GSConv(nn.Module):
    """GSConv (Li et al. 2022, "Slim-neck by GSConv"): dense conv, depthwise conv, channel shuffle.

    ``x1 = ConvBNAct(features / 2, kernel, stride)(x)``; ``x2 = depthwise 5x5 ConvBNAct(x1)``;
    ``y = shuffle(concat([x1, x2]))``. At kernel 3 it has about half the weights and FLOPs of the
    plain 3x3 convolution it replaces.

    Attributes:
      features: number of output channels; must be even.
      kernel_size: kernel size of the dense branch.
      strides: stride of the dense branch (the depthwise branch never strides).
      act: activation of both branches: ``"mish"``, ``"silu"`` or ``"relu"``.
      shuffle: channel shuffle mode, see :func:`channel_shuffle`.
      depthwise_impl: how the depthwise convolution is computed, one of ``DEPTHWISE_IMPLS``.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      norm: the norm of both branches (`bts_jax.models.norms`).
      conv_impl: how the dense convolution is computed (see :class:`ConvBNAct`).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    act: str = "mish"
    shuffle: str = "interleave"
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm: str = DEFAULT_NORM
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies GSConv.

        Args:
          x: input of shape (B, H, W, C_in).
          train: the norms' mode (BatchNorm: batch statistics when True).

        Returns:
          Output of shape (B, H / strides, W / strides, features).
        """
        if self.features % 2:
            raise ValueError(f"GSConv needs an even number of features, got {self.features}.")
        if self.shuffle not in SHUFFLE_MODES:
            raise ValueError(f"Unknown GSConv shuffle {self.shuffle!r}; expected {SHUFFLE_MODES}.")
        get_activation(self.act)  # Fails early, naming the activation, before any parameter.
        half = self.features // 2
        common = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype, norm=self.norm)
        x1 = ConvBNAct(
            half, self.kernel_size, self.strides, name="dense", conv_impl=self.conv_impl, **common
        )(x, train=train)
        x2 = ConvBNAct(
            half, 5, groups=half, depthwise_impl=self.depthwise_impl, name="depthwise", **common
        )(x1, train=train)
        return channel_shuffle(jnp.concatenate([x1, x2], axis=-1), self.shuffle)


class ECA(nn.Module):
    """Efficient Channel Attention (Wang et al., CVPR 2020).

    Global average pooling over H and W, a 1D convolution across the channel axis with one shared
    kernel of size k (no bias, zero padding (k - 1) / 2), a sigmoid, and a channel-wise product
    with the input.

    Attributes:
      kernel_size: odd 1D kernel size; ``None`` derives it from the channel count with
        :func:`eca_kernel_size`.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    kernel_size: int | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Reweights the channels of ``x``.

        Args:
          x: input of shape (B, H, W, C).

        Returns:
          ``x * sigmoid(conv1d(mean_hw(x)))`` of shape (B, H, W, C).
        """
        channels = x.shape[-1]
        k = self.kernel_size or eca_kernel_size(channels)
        if k % 2 == 0:
            raise ValueError(f"ECA kernel_size must be odd, got {k}.")
        # Pool in float32 so bfloat16 activations do not lose the mean of large feature maps.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # (B, C)
        # The channel axis plays the role of the 1D "spatial" axis of a one-channel convolution.
        attention = nn.Conv(
            1,
            (k,),
            padding=[((k - 1) // 2, (k - 1) // 2)],
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(pooled[:, :, None].astype(self.dtype))  # (B, C, 1)
        weights = jax.nn.sigmoid(attention[:, :, 0])  # (B, C)
        return x * weights[:, None, None, :].astype(x.dtype)
