"""Exact reformulations of two convolutions, picked per platform (docs/performance.md).

The depthwise convolution of GSConv (and of the registry's ``dsconv`` and ``ghost``) and the
decoder's 2x2, stride-2 up-convolution each have several formulations that compute the same
function with the same parameters and differ by float rounding only; XLA:CPU runs some of them
several times faster than others. ``"auto"`` picks the fastest measured one for the backend.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# How a depthwise convolution is computed (docs/performance.md, "Depthwise convolution"):
# "grouped" is XLA's feature_group_count convolution; "dense" is the same convolution with the
# (k, k, 1, C) kernel expanded to a block-diagonal (k, k, C, C) dense kernel, C times the FLOPs
# but ~1.7x faster train steps on XLA:CPU, whose grouped convolutions (above all their kernel
# gradients) are slow; "shifted" computes a stride-1 depthwise convolution and its input gradient
# as sums of k*k shifted products (one elementwise loop each, no wasted FLOPs) and its kernel
# gradient as "dense" does (a further ~1.2x on the CPU train step); "auto" is "shifted" on CPU and
# "grouped" elsewhere. All compute the same function with the same parameters: they differ by
# float rounding only.
DEPTHWISE_IMPLS = ("auto", "grouped", "dense", "shifted")

# How the decoder's 2x2, stride-2 up-convolution is computed (docs/performance.md): "conv_transpose"
# is Flax's nn.ConvTranspose, which XLA runs as a convolution over a zero-dilated input (its
# kernel gradient was the slowest operation of the CPU train step); "gemm" computes the same
# function as one matrix product per step (each input pixel times the kernel gives its 2x2 output
# block), with the same parameters; "auto" is "gemm" on CPU and "conv_transpose" elsewhere.
UPSAMPLE_IMPLS = ("auto", "conv_transpose", "gemm")


def _resolve(
    setting: str, impl: str, choices: tuple[str, ...], auto: tuple[str, str], backend: str | None
) -> str:
    """``impl`` checked against ``choices``; ``"auto"`` is ``auto[0]`` on CPU, else ``auto[1]``."""
    if impl not in choices:
        raise ValueError(f"{setting}={impl!r}; expected one of {choices}.")
    if impl != "auto":
        return impl
    on_cpu, elsewhere = auto
    return on_cpu if (backend or jax.default_backend()) == "cpu" else elsewhere


def resolve_depthwise_impl(impl: str, backend: str | None = None) -> str:
    """Returns ``"grouped"``, ``"dense"`` or ``"shifted"`` for ``impl`` (``"auto"``: by backend).

    Args:
      impl: one of ``DEPTHWISE_IMPLS``.
      backend: the platform the model is traced for; defaults to ``jax.default_backend()``.

    Raises:
      ValueError: ``impl`` is not one of ``DEPTHWISE_IMPLS``.
    """
    return _resolve("depthwise_impl", impl, DEPTHWISE_IMPLS, ("shifted", "grouped"), backend)


def block_diagonal_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    *,
    feature_group_count: int = 1,
    dimension_numbers: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` computing a depthwise convolution as a dense one.

    A depthwise convolution (``feature_group_count`` = C_in = C_out = C, kernel (kh, kw, 1, C) in
    Flax's HWIO layout) equals a dense convolution whose kernel is block-diagonal:
    ``dense[i, j, c_in, c_out] = kernel[i, j, 0, c_out] * (c_in == c_out)``. The off-diagonal
    zeros add exact zeros, and the gradient reaches only the diagonal, i.e. ``kernel``. Any other
    convolution is passed to ``lax.conv_general_dilated`` unchanged. Flax's ``nn.Conv`` takes this
    as its ``conv_general_dilated``, so parameters, their names and their initialisation do not
    change.

    Args:
      lhs: input of shape (B, H, W, C) (NHWC, as ``nn.Conv`` calls it).
      rhs: kernel of shape (kh, kw, C_in / groups, C_out).
      window_strides: spatial strides.
      padding: as ``lax.conv_general_dilated``.
      feature_group_count: number of groups.
      dimension_numbers: as ``lax.conv_general_dilated``; must be NHWC/HWIO/NHWC to expand.
      **kwargs: passed through (dilations, precision, preferred_element_type).

    Returns:
      The convolution's output, (B, H', W', C_out).
    """
    channels = rhs.shape[-1]
    # nn.Conv passes a ConvDimensionNumbers, not the layout strings: compare normalised forms.
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    is_depthwise = (
        feature_group_count > 1
        and rhs.shape[-2] == 1
        and feature_group_count == channels == lhs.shape[-1]
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )
    if is_depthwise:
        rhs = rhs * jnp.eye(channels, dtype=rhs.dtype)  # (kh, kw, 1, C) -> (kh, kw, C, C)
        feature_group_count = 1
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        feature_group_count=feature_group_count,
        dimension_numbers=dimension_numbers,
        **kwargs,
    )


def resolve_upsample_impl(impl: str, backend: str | None = None) -> str:
    """Returns ``"conv_transpose"`` or ``"gemm"`` for ``impl`` (``"auto"`` picks by backend).

    Args:
      impl: one of ``UPSAMPLE_IMPLS``.
      backend: the platform the model is traced for; defaults to ``jax.default_backend()``.

    Raises:
      ValueError: ``impl`` is not one of ``UPSAMPLE_IMPLS``.
    """
    return _resolve("upsample_impl", impl, UPSAMPLE_IMPLS, ("gemm", "conv_transpose"), backend)


class UpConvGemm(nn.Module):
    """``nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID")`` as one GEMM.

    With a 2x2 kernel and stride 2 the output's 2x2 blocks do not overlap: output pixel
    ``(2h + i, 2w + j)`` is input pixel ``(h, w)`` times the kernel tap that lands there, which for
    ``lax.conv_transpose`` (``transpose_kernel=False``) is the spatially flipped one:
    ``y[b, 2h + i, 2w + j, o] = sum_c x[b, h, w, c] * kernel[1 - i, 1 - j, c, o] + bias[o]``.
    That is one matrix product of the (B*H*W, C_in) input by the (C_in, 4*C_out) kernel and a
    reshape, instead of a convolution over a zero-dilated input; its gradients are matrix
    products too. Parameters (``kernel`` (2, 2, C_in, features) and ``bias`` (features,)), their
    names, initialisers and dtypes are those of ``nn.ConvTranspose``, so a module named like the
    one it replaces reads the same checkpoints.

    Attributes:
      features: output channels.
      use_bias: add a bias.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      kernel_init: as ``nn.ConvTranspose``'s default (LeCun normal).
      bias_init: as ``nn.ConvTranspose``'s default (zeros).
    """

    features: int
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, 2H, 2W, features)."""
        b, h, w, channels = x.shape
        kernel = self.param(
            "kernel", self.kernel_init, (2, 2, channels, self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel[::-1, ::-1])  # (B, H, 2, W, 2, C_out)
        y = y.reshape(b, 2 * h, 2 * w, self.features)
        return y + bias if bias is not None else y


def _is_depthwise(lhs, rhs, feature_group_count, dimension_numbers) -> bool:
    """Whether a ``conv_general_dilated`` call is a depthwise NHWC/HWIO convolution."""
    channels = rhs.shape[-1]
    # nn.Conv passes a ConvDimensionNumbers, not the layout strings: compare normalised forms.
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return (
        feature_group_count > 1
        and rhs.shape[-2] == 1
        and feature_group_count == channels == lhs.shape[-1]
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )


def _shifted_sum(x: jax.Array, kernel: jax.Array, padding: tuple) -> jax.Array:
    """Stride-1 depthwise correlation as a sum of shifted products, accumulated in float32.

    ``y[b, h, w, c] = sum_{i, j} x_padded[b, h + i, w + j, c] * kernel[i, j, 0, c]``.
    """
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0))).astype(jnp.float32)
    height, width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    taps = kernel.astype(jnp.float32)
    out = jnp.zeros((x.shape[0], height, width, x.shape[-1]), jnp.float32)
    for i in range(kh):
        for j in range(kw):
            out = out + padded[:, i : i + height, j : j + width] * taps[i, j, 0]
    return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_depthwise(x: jax.Array, kernel: jax.Array, padding: tuple, precision: Any):
    """Stride-1 depthwise convolution: shifted sums forward and for the input gradient."""
    del precision  # Elementwise products: nothing to choose.
    return _shifted_sum(x, kernel, padding)


def _shifted_depthwise_fwd(x, kernel, padding, precision):
    return _shifted_depthwise(x, kernel, padding, precision), (x, kernel)


def _shifted_depthwise_bwd(padding, precision, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    # The input gradient is the correlation of g, padded by k - 1 - pad, with the flipped kernel.
    transposed = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),)
    transposed += ((kw - 1 - padding[1][0], kw - 1 - padding[1][1]),)
    dx = _shifted_sum(g, kernel[::-1, ::-1], transposed)
    # The kernel gradient is the block-diagonal dense convolution's (a fast XLA:CPU kernel).
    _, kernel_vjp = jax.vjp(
        lambda kernel: block_diagonal_conv(
            x,
            kernel,
            (1, 1),
            padding,
            feature_group_count=kernel.shape[-1],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        ),
        kernel,
    )
    (dkernel,) = kernel_vjp(g)
    return dx, dkernel


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


def shifted_depthwise_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    *,
    feature_group_count: int = 1,
    dimension_numbers: Any = None,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` computing a stride-1 depthwise convolution as shifted sums.

    For a depthwise convolution (``feature_group_count`` = C_in = C_out = C, NHWC/HWIO, stride 1,
    explicit padding no larger than the kernel, no dilation) the output is
    ``sum_{i,j} x_padded[:, i:i + H', j:j + W', :] * kernel[i, j, 0, :]``: k*k shifted products
    that XLA fuses into one elementwise loop, with no multiplication by zero (the dense form
    multiplies C times the FLOPs, the grouped form runs as a slow generic loop on XLA:CPU). The
    input gradient is the same kind of sum with the flipped kernel; the kernel gradient is the
    one of :func:`block_diagonal_conv`. Products are accumulated in float32. Any other
    convolution goes to :func:`block_diagonal_conv`. Flax's ``nn.Conv`` takes this as its
    ``conv_general_dilated``, so parameters do not change.

    Args:
      lhs: input of shape (B, H, W, C).
      rhs: kernel of shape (kh, kw, 1, C) for a depthwise convolution.
      window_strides: spatial strides.
      padding: as ``lax.conv_general_dilated``.
      feature_group_count: number of groups.
      dimension_numbers: as ``lax.conv_general_dilated``.
      lhs_dilation: input dilation (None or ones for the shifted sum).
      rhs_dilation: kernel dilation (None or ones for the shifted sum).
      precision: as ``lax.conv_general_dilated`` (used by the kernel gradient).
      **kwargs: passed through (preferred_element_type).

    Returns:
      The convolution's output, (B, H', W', C_out).
    """
    kh, kw = rhs.shape[:2]
    ones = (None, (1, 1), [1, 1])
    explicit = not isinstance(padding, str) and len(padding) == 2
    shifted = (
        _is_depthwise(lhs, rhs, feature_group_count, dimension_numbers)
        and tuple(window_strides) == (1, 1)
        and explicit
        and all(0 <= p < k for pair, k in zip(padding, (kh, kw), strict=True) for p in pair)
        and lhs_dilation in ones
        and rhs_dilation in ones
        and not kwargs
    )
    if shifted:
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        return _shifted_depthwise(lhs, rhs, padding, precision)
    return block_diagonal_conv(
        lhs,
        rhs,
        window_strides,
        padding,
        feature_group_count=feature_group_count,
        dimension_numbers=dimension_numbers,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        precision=precision,
        **kwargs,
    )
