"""U-Net (Ronneberger et al. 2015, with BatchNorm, "same" padding) and its GSConv/ECA variants."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bts_jax.models.layers import (
    DEPTHWISE_IMPLS,
    ECA,
    SHUFFLE_MODES,
    UPSAMPLE_IMPLS,
    ConvBNAct,
    GSConv,
    UpConvGemm,
    get_activation,
    resolve_upsample_impl,
)

UPSAMPLE_MODES = ("transpose", "bilinear")
GSCONV_PLACES = frozenset({"encoder", "bottleneck", "decoder"})
ECA_PLACES = frozenset({"encoder", "bottleneck", "decoder", "skip"})


def _check_places(value: Sequence[str], allowed: frozenset[str], field: str) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError(f"UNet.{field} takes a collection of names, not the string {value!r}.")
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(
            f"UNet.{field} has unknown entries {sorted(unknown)}; allowed: {sorted(allowed)}."
        )
    return frozenset(value)


class ConvBlock(nn.Module):
    """The U-Net double convolution: two 3x3 convolutions, optionally GSConv, then optional ECA.

    Attributes:
      features: output channels of both convolutions.
      use_gsconv: replace both ConvBNAct(3x3, ReLU) by GSConv.
      use_eca: apply ECA to the block's output.
      gsconv_act: GSConv activation.
      gsconv_shuffle: GSConv channel shuffle mode.
      depthwise_impl: how GSConv's depthwise convolution is computed (``DEPTHWISE_IMPLS``).
      eca_kernel_size: ECA kernel size, ``None`` for the adaptive rule.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    features: int
    use_gsconv: bool = False
    use_eca: bool = False
    gsconv_act: str = "mish"
    gsconv_shuffle: str = "interleave"
    depthwise_impl: str = "auto"
    eca_kernel_size: int | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, H, W, features)."""
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(2):
            if self.use_gsconv:
                conv = GSConv(
                    self.features,
                    act=self.gsconv_act,
                    shuffle=self.gsconv_shuffle,
                    depthwise_impl=self.depthwise_impl,
                    name=f"conv_{i}",
                    **dtypes,
                )
            else:
                conv = ConvBNAct(self.features, 3, act="relu", name=f"conv_{i}", **dtypes)
            x = conv(x, train=train)
        if self.use_eca:
            x = ECA(self.eca_kernel_size, name="eca", **dtypes)(x)
        return x


class Upsample(nn.Module):
    """Doubles H and W and sets the channel count.

    Attributes:
      features: output channels.
      mode: ``"transpose"`` (2x2 stride-2 transposed conv with bias) or ``"bilinear"``
        (bilinear resize, then a 1x1 conv with bias).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      impl: how ``"transpose"`` is computed, one of ``UPSAMPLE_IMPLS``: ``"conv_transpose"``
        (``nn.ConvTranspose``), ``"gemm"`` (:class:`UpConvGemm`, the same function and
        parameters) or ``"auto"`` (``"gemm"`` on CPU, ``"conv_transpose"`` elsewhere).
    """

    features: int
    mode: str = "transpose"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, 2H, 2W, features)."""
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.mode == "transpose":
            if resolve_upsample_impl(self.impl) == "gemm":
                return UpConvGemm(self.features, name="conv", **dtypes)(x)
            return nn.ConvTranspose(
                self.features, (2, 2), strides=(2, 2), padding="VALID", name="conv", **dtypes
            )(x)
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
        return nn.Conv(self.features, (1, 1), name="conv", **dtypes)(x)


class UNet(nn.Module):
    """U-Net with switchable GSConv and ECA (docs/design.md section 2); defaults: the baseline.

    Parameter paths are stable across ablations: ``enc_{i}``, ``bottleneck``, ``up_{i}``,
    ``dec_{i}``, ``skip_eca_{i}``, ``head`` (decoder index i counts from the deepest stage).

    Attributes:
      features: encoder widths, one per stage; the bottleneck has twice the last width.
      num_classes: output channels; 1 is a binary tumour logit, more are softmax logits.
      upsample: ``"transpose"`` or ``"bilinear"``.
      gsconv_in: blocks whose convolutions are GSConv: a subset of
        {"encoder", "bottleneck", "decoder"}.
      eca_in: where ECA is applied: a subset of {"encoder", "bottleneck", "decoder", "skip"}
        ("skip" reweights each skip tensor before concatenation).
      gsconv_act: activation inside GSConv.
      gsconv_shuffle: GSConv channel shuffle mode.
      depthwise_impl: how GSConv's depthwise convolutions are computed: ``"auto"`` (``"shifted"``
        on CPU, ``"grouped"`` elsewhere), ``"grouped"``, ``"dense"`` or ``"shifted"``; the same
        function either way.
      eca_kernel_size: ECA kernel size for every ECA, ``None`` for the adaptive rule.
      dtype: computation dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      upsample_impl: how ``"transpose"`` is computed: ``"auto"`` (``"gemm"`` on CPU,
        ``"conv_transpose"`` elsewhere), ``"conv_transpose"`` or ``"gemm"``; the same function.
    """

    features: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1
    upsample: str = "transpose"
    gsconv_in: Sequence[str] = ()
    eca_in: Sequence[str] = ()
    gsconv_act: str = "mish"
    gsconv_shuffle: str = "interleave"
    depthwise_impl: str = "auto"
    eca_kernel_size: int | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    upsample_impl: str = "auto"  # Last, so that positional construction keeps its meaning.

    @property
    def downsampling_factor(self) -> int:
        """Input H and W must be multiples of this (2 ** number of stages)."""
        return 2 ** len(self.features)

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raises a ValueError naming the problem if ``shape`` is not a valid (B, H, W, C) input."""
        if len(shape) != 4:
            raise ValueError(f"UNet expects NHWC input of rank 4, got shape {tuple(shape)}.")
        factor = self.downsampling_factor
        _, height, width, _ = shape
        if height % factor or width % factor:
            raise ValueError(
                f"UNet input height and width must be multiples of {factor} "
                f"(2 ** {len(self.features)} stages), got {height}x{width}. Resize or pad the "
                "images (config.data.image_size) to a multiple."
            )

    def _check_fields(self) -> tuple[frozenset[str], frozenset[str]]:
        if not self.features or any(int(f) < 1 for f in self.features):
            raise ValueError(f"UNet.features must be positive widths, got {self.features}.")
        if self.num_classes < 1:
            raise ValueError(f"UNet.num_classes must be >= 1, got {self.num_classes}.")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"UNet.upsample={self.upsample!r}; expected one of {UPSAMPLE_MODES}.")
        if self.upsample_impl not in UPSAMPLE_IMPLS:
            raise ValueError(
                f"UNet.upsample_impl={self.upsample_impl!r}; expected one of {UPSAMPLE_IMPLS}."
            )
        if self.gsconv_shuffle not in SHUFFLE_MODES:
            raise ValueError(
                f"UNet.gsconv_shuffle={self.gsconv_shuffle!r}; expected one of {SHUFFLE_MODES}."
            )
        if self.depthwise_impl not in DEPTHWISE_IMPLS:
            raise ValueError(
                f"UNet.depthwise_impl={self.depthwise_impl!r}; expected one of {DEPTHWISE_IMPLS}."
            )
        gsconv_in = _check_places(self.gsconv_in, GSCONV_PLACES, "gsconv_in")
        eca_in = _check_places(self.eca_in, ECA_PLACES, "eca_in")
        if gsconv_in:
            get_activation(self.gsconv_act)
            odd = [f for f in (*self.features, 2 * self.features[-1]) if f % 2]
            if odd:
                raise ValueError(f"GSConv needs even widths; UNet.features has odd widths {odd}.")
        return gsconv_in, eca_in

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Segments a batch of images.

        Args:
          x: images of shape (B, H, W, C_in), H and W multiples of ``2 ** len(features)``.
          train: BatchNorm uses (and updates) batch statistics when True.

        Returns:
          Logits of shape (B, H, W, num_classes) in ``dtype``.
        """
        gsconv_in, eca_in = self._check_fields()
        self.check_input_shape(x.shape)
        common = dict(
            gsconv_act=self.gsconv_act,
            gsconv_shuffle=self.gsconv_shuffle,
            depthwise_impl=self.depthwise_impl,
            eca_kernel_size=self.eca_kernel_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        def block(features: int, place: str, name: str) -> ConvBlock:
            return ConvBlock(
                features,
                use_gsconv=place in gsconv_in,
                use_eca=place in eca_in,
                name=name,
                **common,
            )

        x = x.astype(self.dtype)
        skips = []
        for i, features in enumerate(self.features):
            x = block(features, "encoder", f"enc_{i}")(x, train=train)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = block(2 * self.features[-1], "bottleneck", "bottleneck")(x, train=train)

        for i, (features, skip) in enumerate(zip(self.features[::-1], skips[::-1], strict=True)):
            x = Upsample(
                features,
                self.upsample,
                impl=self.upsample_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"up_{i}",
            )(x)
            if "skip" in eca_in:
                skip = ECA(
                    self.eca_kernel_size,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"skip_eca_{i}",
                )(skip)
            x = jnp.concatenate([skip, x], axis=-1)
            x = block(features, "decoder", f"dec_{i}")(x, train=train)

        return nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(x)
