"""The convolution zoo: each a layer that replaces one 3x3 convolution of a U-Net stage.

Registered names (docs/design.md section 9): ``double_conv`` (ConvBNAct 3x3 + ReLU: two of them
are the U-Net's double convolution), ``gsconv`` (GSConv, Li et al. 2022), ``dsconv``
(depthwise-separable, Howard et al. 2017 / Chollet 2017) and ``ghost`` (ghost module, Han et al.
2020). Each maps (B, H, W, C_in) to (B, ceil(H / s), ceil(W / s), features) for stride s, the
striding done by its first convolution, and is called with ``train`` (BatchNorm mode). Each
norm is BatchNorm unless ``options.norm`` (``config.model.norm``) names another.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bts_jax.models.layers import DEFAULT_NORM, ConvBNAct, GSConv
from bts_jax.models.registry import BlockOptions, register_conv


class DepthwiseSeparableConv(nn.Module):
    """Depthwise-separable convolution (MobileNet, Howard et al. 2017; Xception, Chollet 2017).

    A depthwise k x k ConvBNAct on the C_in input channels (one filter each, striding), then a
    pointwise 1x1 ConvBNAct to ``features``, each followed by BatchNorm and the activation, as
    in MobileNet (Xception has neither between the two). Weights: k^2 C_in + C_in F against
    k^2 C_in F for the dense convolution.

    Attributes:
      features: output channels F.
      kernel_size: depthwise kernel size k.
      strides: stride of the depthwise convolution.
      act: activation after each convolution.
      depthwise_impl: how the depthwise convolution is computed (``layers.DEPTHWISE_IMPLS``).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      norm: the norm after each convolution (`bts_jax.models.norms`).
      conv_impl: how the dense convolutions are computed (``layers.ConvBNAct``).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    act: str = "relu"
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm: str = DEFAULT_NORM
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, ceil(H / strides), ceil(W / strides), features)."""
        channels = x.shape[-1]
        dtypes = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype, norm=self.norm)
        dtypes.update(conv_impl=self.conv_impl)
        x = ConvBNAct(
            channels,
            self.kernel_size,
            self.strides,
            groups=channels,
            depthwise_impl=self.depthwise_impl,
            name="depthwise",
            **dtypes,
        )(x, train=train)
        return ConvBNAct(self.features, 1, name="pointwise", **dtypes)(x, train=train)


class GhostConv(nn.Module):
    """The ghost module of GhostNet (Han et al., CVPR 2020).

    A primary k x k ConvBNAct makes m = ceil(F / ratio) intrinsic feature maps (striding); a
    cheap depthwise d x d ConvBNAct makes m (ratio - 1) "ghost" maps from them (one filter per
    intrinsic map for ratio 2, else ratio - 1 each); the output is the first F channels of
    [intrinsic, ghost]. Han et al. replace a network's k x k convolution with k the primary
    kernel, ratio s = 2 and d = 3; so does bts_jax.

    Attributes:
      features: output channels F.
      kernel_size: primary kernel size k.
      strides: stride of the primary convolution.
      ratio: s, output maps per intrinsic map.
      cheap_kernel_size: d, the cheap depthwise kernel size.
      act: activation after both convolutions.
      depthwise_impl: how the cheap depthwise convolution is computed.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      norm: the norm after each convolution (`bts_jax.models.norms`).
      conv_impl: how the dense convolutions are computed (``layers.ConvBNAct``).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    ratio: int = 2
    cheap_kernel_size: int = 3
    act: str = "relu"
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm: str = DEFAULT_NORM
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, ceil(H / strides), ceil(W / strides), features)."""
        if self.ratio < 2:
            raise ValueError(f"GhostConv needs ratio >= 2, got {self.ratio}.")
        intrinsic = math.ceil(self.features / self.ratio)
        dtypes = dict(act=self.act, dtype=self.dtype, param_dtype=self.param_dtype, norm=self.norm)
        dtypes.update(conv_impl=self.conv_impl)
        primary = ConvBNAct(intrinsic, self.kernel_size, self.strides, name="primary", **dtypes)(
            x, train=train
        )
        ghost = ConvBNAct(
            intrinsic * (self.ratio - 1),
            self.cheap_kernel_size,
            groups=intrinsic,
            depthwise_impl=self.depthwise_impl,
            name="cheap",
            **dtypes,
        )(primary, train=train)
        return jnp.concatenate([primary, ghost], axis=-1)[..., : self.features]


def _double_conv(features, *, strides, name, dtype, param_dtype, options: BlockOptions):
    return ConvBNAct(
        features,
        3,
        strides,
        act="relu",
        name=name,
        dtype=dtype,
        param_dtype=param_dtype,
        norm=options.norm,
        conv_impl=options.conv_impl,
    )


def _gsconv(features, *, strides, name, dtype, param_dtype, options: BlockOptions):
    return GSConv(
        features,
        strides=strides,
        act=options.gsconv_act,
        shuffle=options.gsconv_shuffle,
        depthwise_impl=options.depthwise_impl,
        name=name,
        dtype=dtype,
        param_dtype=param_dtype,
        norm=options.norm,
        conv_impl=options.conv_impl,
    )


def _with_depthwise_impl(cls):
    """A factory for a layer set by ``options``' ``depthwise_impl``, ``norm``, ``conv_impl``."""

    def factory(features, *, strides, name, dtype, param_dtype, options: BlockOptions):
        return cls(
            features,
            strides=strides,
            depthwise_impl=options.depthwise_impl,
            name=name,
            dtype=dtype,
            param_dtype=param_dtype,
            norm=options.norm,
            conv_impl=options.conv_impl,
        )

    return factory


register_conv("double_conv", _double_conv)
register_conv("gsconv", _gsconv)
register_conv("dsconv", _with_depthwise_impl(DepthwiseSeparableConv))
register_conv("ghost", _with_depthwise_impl(GhostConv))
