"""The attention zoo: blocks that reweight a (B, H, W, C) tensor and return its shape.

Registered names (docs/design.md section 9): ``none``, ``eca`` (Wang et al. 2020, in
``layers.py``), ``se`` (squeeze-and-excitation, Hu et al. 2018), ``cbam`` (Woo et al. 2018),
``coord`` (coordinate attention, Hou et al. 2021) and ``scse`` (concurrent spatial and channel
SE, Roy et al. 2018). Global pooling runs in float32 whatever the computation dtype, as in ECA.
The BatchNorm of ``cbam`` and ``coord`` is ``options.norm`` (``config.model.norm``), BatchNorm by
default.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bts_jax.models.layers import DEFAULT_NORM, ECA, apply_norm, has_norm
from bts_jax.models.registry import BlockOptions, register_attention

# The fewest hidden units of a squeeze-excite MLP (capped at C): at U-Net widths 16-64 the
# ratio 16 alone would leave 1-4 units.
MIN_HIDDEN = 8


def squeeze_units(channels: int, reduction: int, minimum: int = MIN_HIDDEN) -> int:
    """Hidden units of a squeeze-excite MLP: ``max(channels // reduction, min(channels, minimum))``.

    Args:
      channels: C.
      reduction: the ratio r >= 1.
      minimum: the floor, capped at C.
    """
    if reduction < 1:
        raise ValueError(f"The squeeze-excite reduction ratio must be >= 1, got {reduction}.")
    return max(channels // reduction, min(channels, minimum))


def _spatial_mean(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C), averaged in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class NoAttention(nn.Module):
    """The identity: ``attention="none"``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns x, (B, H, W, C)."""
        return x


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018).

    ``s = sigmoid(W2 relu(W1 z + b1) + b2)`` with z the spatial mean of x (C values), W1 of
    shape (C, h), h = :func:`squeeze_units`; ``y = x * s`` per channel.

    Attributes:
      reduction: the ratio r.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    reduction: int = 16
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) to (B, H, W, C)."""
        channels = x.shape[-1]
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        z = _spatial_mean(x).astype(self.dtype)
        z = jax.nn.relu(
            nn.Dense(squeeze_units(channels, self.reduction), name="reduce", **dense)(z)
        )
        s = jax.nn.sigmoid(nn.Dense(channels, name="expand", **dense)(z))
        return x * s[:, None, None, :].astype(x.dtype)


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018): channel, then spatial.

    Channel: ``Mc = sigmoid(MLP(avg_hw x) + MLP(max_hw x))``, one MLP without biases
    (C -> h -> C, ReLU; the paper's equation and timm's default), ``x' = x * Mc``. Spatial:
    ``Ms = sigmoid(BN(conv7x7([mean_c x'; max_c x'])))``, no bias, padding 3, with the
    BatchNorm of the authors' code and timm (another ``norm``; with ``"none"`` the convolution
    has a bias); ``y = x' * Ms``.

    Attributes:
      reduction: the channel MLP's ratio r (h = :func:`squeeze_units`).
      spatial_kernel_size: the spatial convolution's kernel (7 in the paper).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      norm: the norm of the spatial map (`bts_jax.models.norms`), at ``spatial_bn``.
    """

    reduction: int = 16
    spatial_kernel_size: int = 7
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm: str = DEFAULT_NORM

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C) to (B, H, W, C); ``train`` is the BatchNorm mode."""
        channels = x.shape[-1]
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        reduce = nn.Dense(squeeze_units(channels, self.reduction), False, name="reduce", **dtypes)
        expand = nn.Dense(channels, use_bias=False, name="expand", **dtypes)

        def mlp(z):
            return expand(jax.nn.relu(reduce(z.astype(self.dtype))))

        pooled_max = jnp.max(x, axis=(1, 2))
        s = jax.nn.sigmoid(mlp(_spatial_mean(x)) + mlp(pooled_max))
        x = x * s[:, None, None, :].astype(x.dtype)
        k = self.spatial_kernel_size
        maps = jnp.stack(
            [jnp.mean(x.astype(jnp.float32), axis=-1), jnp.max(x, axis=-1).astype(jnp.float32)],
            axis=-1,
        )  # (B, H, W, 2): channel mean, channel max
        a = nn.Conv(
            1,
            (k, k),
            padding=((k // 2,) * 2,) * 2,
            use_bias=not has_norm(self.norm),  # A bias only where no norm shifts the map.
            name="spatial_conv",
            **dtypes,
        )(maps.astype(self.dtype))
        a = apply_norm(self.norm, a, train=train, name="spatial_bn", **dtypes)
        return x * jax.nn.sigmoid(a).astype(x.dtype)


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou, Zhou, Feng, CVPR 2021).

    ``zh[h] = mean_w x[h, w]`` (H x C) and ``zw[w] = mean_h x[h, w]`` (W x C) are stacked along
    the position axis, mapped by one shared 1x1 convolution to m = max(8, C // 32) channels (with
    bias), BatchNorm and h-swish (``v * relu6(v + 3) / 6``), split back, and each mapped to C
    channels by its own 1x1 convolution and a sigmoid: ``y[h, w, c] = x[h, w, c] * gh[h, c] *
    gw[w, c]``. BatchNorm sees the H + W positions of every image together, as in the authors'
    code.

    Attributes:
      reduction: the ratio (32 in the paper).
      min_hidden: the floor of m (8 in the paper; not capped at C).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      norm: the norm of the hidden features (`bts_jax.models.norms`), at ``bn``.
    """

    reduction: int = 32
    min_hidden: int = 8
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    norm: str = DEFAULT_NORM

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C) to (B, H, W, C); ``train`` is the BatchNorm mode."""
        _, height, _, channels = x.shape
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x32 = x.astype(jnp.float32)
        z = jnp.concatenate([x32.mean(axis=2), x32.mean(axis=1)], axis=1)  # (B, H + W, C)
        hidden = max(self.min_hidden, channels // self.reduction)
        z = nn.Dense(hidden, name="reduce", **dtypes)(z.astype(self.dtype))
        z = apply_norm(self.norm, z, train=train, name="bn", **dtypes)
        z = jax.nn.hard_swish(z)
        gate_h = jax.nn.sigmoid(nn.Dense(channels, name="attend_h", **dtypes)(z[:, :height]))
        gate_w = jax.nn.sigmoid(nn.Dense(channels, name="attend_w", **dtypes)(z[:, height:]))
        return x * gate_h[:, :, None, :].astype(x.dtype) * gate_w[:, None, :, :].astype(x.dtype)


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-excitation (Roy, Navab, Wachinger, MICCAI 2018).

    ``y = x * cSE(x) + x * sSE(x)``: cSE is squeeze-excitation (C -> h -> C with biases, ReLU,
    sigmoid, h = :func:`squeeze_units`), sSE a 1x1 convolution to one channel with bias and a
    sigmoid (one weight per pixel). segmentation_models_pytorch's decoder attention ``"scse"``.

    Attributes:
      reduction: the channel branch's ratio r.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    reduction: int = 16
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (B, H, W, C) to (B, H, W, C)."""
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channel = SqueezeExcite(self.reduction, name="channel", **dtypes)(x)  # x * cSE(x)
        spatial_gate = jax.nn.sigmoid(nn.Conv(1, (1, 1), name="spatial", **dtypes)(x))
        return channel + x * spatial_gate.astype(x.dtype)


def _none(channels, *, name, dtype, param_dtype, options: BlockOptions):
    del channels, dtype, param_dtype, options
    return NoAttention(name=name)


def _eca(channels, *, name, dtype, param_dtype, options: BlockOptions):
    del channels  # ECA reads C from its input.
    return ECA(options.eca_kernel_size, name=name, dtype=dtype, param_dtype=param_dtype)


def _reduced(cls):
    def factory(channels, *, name, dtype, param_dtype, options: BlockOptions):
        del channels
        # Only CBAM of these has a norm (its spatial map's).
        norm = {"norm": options.norm} if "norm" in cls.__dataclass_fields__ else {}
        return cls(options.se_reduction, name=name, dtype=dtype, param_dtype=param_dtype, **norm)

    factory.__doc__ = f"{cls.__name__} with ``options.se_reduction`` (and ``options.norm``)."
    return factory


def _coord(channels, *, name, dtype, param_dtype, options: BlockOptions):
    del channels
    return CoordinateAttention(name=name, dtype=dtype, param_dtype=param_dtype, norm=options.norm)


register_attention("none", _none)
register_attention("eca", _eca)
register_attention("se", _reduced(SqueezeExcite))
register_attention("cbam", _reduced(CBAM))
register_attention("coord", _coord)
register_attention("scse", _reduced(SCSE))
