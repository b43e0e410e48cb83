"""U-Net (Ronneberger et al. 2015, with BatchNorm, "same" padding) with blocks chosen by name.

The paper's variants are GSConv and ECA in some stage groups (``gsconv_in``, ``eca_in``); any
registered or importable block can take their place (``conv``, ``attention``; docs/design.md
section 9, docs/extending.md).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bts_jax.models import attention as _attention  # noqa: F401  (registers the zoo)
from bts_jax.models import convs as _convs  # noqa: F401  (registers the zoo)
from bts_jax.models import norms, registry
from bts_jax.models.layers import (
    DEPTHWISE_IMPLS,
    SHUFFLE_MODES,
    UPSAMPLE_IMPLS,
    UpConvGemm,
    get_activation,
    resolve_upsample_impl,
)
from bts_jax.models.onednn.ffi import CONV_IMPLS

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


def attention_module_name(attention: str) -> str:
    """A stage's attention submodule name: ``eca`` (as before the registry) or ``attention``."""
    return "eca" if attention == "eca" else "attention"


class ConvBlock(nn.Module):
    """A U-Net stage: two convolution layers of one kind, then an optional attention block.

    Parameter paths: ``conv_0``, ``conv_1``, and ``eca`` (ECA) or ``attention`` (any other).

    Attributes:
      features: output channels of both convolutions.
      conv: the convolution's registry name or import path (``double_conv``: ConvBNAct 3x3 + ReLU).
      attention: the attention's registry name or import path (``none``: no block).
      options: settings of the built-in blocks.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    features: int
    conv: str = "double_conv"
    attention: str = "none"
    options: registry.BlockOptions = registry.BlockOptions()
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, H, W, features)."""
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype, options=self.options)
        make_conv = registry.resolve("conv", self.conv, "ConvBlock.conv")
        for i in range(2):
            conv = make_conv(self.features, strides=1, name=f"conv_{i}", **common)
            x = registry.call_block(conv, x, train)
        if self.attention != "none":
            make = registry.resolve("attention", self.attention, "ConvBlock.attention")
            block = make(self.features, name=attention_module_name(self.attention), **common)
            x = registry.call_block(block, x, train)
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
    """U-Net with its stages' blocks chosen by name (docs/design.md sections 2 and 9).

    Defaults: the baseline (``double_conv``, no attention). Parameter paths are stable across
    ablations: ``enc_{i}``, ``bottleneck``, ``up_{i}``, ``dec_{i}``, ``skip_eca_{i}`` (or
    ``skip_attention_{i}``), ``head`` (decoder index i counts from the deepest stage); inside a
    stage ``conv_0``, ``conv_1`` and ``eca`` (or ``attention``).

    Attributes:
      features: encoder widths, one per stage; the bottleneck has twice the last width.
      num_classes: output channels; 1 is a binary tumour logit, more are softmax logits.
      upsample: ``"transpose"`` or ``"bilinear"``.
      gsconv_in: blocks whose convolutions are GSConv: a subset of
        {"encoder", "bottleneck", "decoder"}.
      eca_in: where ECA is applied: a subset of {"encoder", "bottleneck", "decoder", "skip"}
        ("skip" reweights each skip tensor before concatenation).
      conv: convolution per group by name, overriding ``gsconv_in`` where it names a group:
        ``""`` (as ``gsconv_in`` says), a name for encoder, bottleneck and decoder
        (``"dsconv"``), or ``group:name`` pairs (``"encoder:ghost,decoder:gsconv"``); a name is
        registered (``registry.conv_names()``) or an import path ``package.module:Class``.
      attention: attention per group, likewise over ``eca_in`` (groups include ``skip``).
      gsconv_act: activation inside GSConv.
      gsconv_shuffle: GSConv channel shuffle mode.
      depthwise_impl: how GSConv's depthwise convolutions are computed: ``"auto"`` (``"shifted"``
        on CPU, ``"grouped"`` elsewhere), ``"grouped"``, ``"dense"`` or ``"shifted"``; the same
        function either way.
      eca_kernel_size: ECA kernel size for every ECA, ``None`` for the adaptive rule.
      se_reduction: reduction ratio of the squeeze-excite MLPs (``se``, ``cbam``, ``scse``).
      dtype: computation dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      upsample_impl: how ``"transpose"`` is computed: ``"auto"`` (``"gemm"`` on CPU,
        ``"conv_transpose"`` elsewhere), ``"conv_transpose"`` or ``"gemm"``; the same function.
      norm: the norm of every block that has one (`bts_jax.models.norms`): ``"batch"`` (the
        only one with running statistics, ``batch_stats``), ``"group(G)"``, ``"instance"``,
        ``"layer"``, ``"none"``, with arguments (``"batch(momentum=0.99)"``), or an import path.
      conv_impl: how the blocks' dense convolutions are computed: ``"auto"`` (oneDNN on a CPU
        with one device when the extension builds, else XLA), ``"xla"`` or ``"onednn"``
        (`bts_jax.models.onednn`); the same function either way.
    """

    features: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1
    upsample: str = "transpose"
    gsconv_in: Sequence[str] = ()
    eca_in: Sequence[str] = ()
    conv: str = ""
    attention: str = ""
    gsconv_act: str = "mish"
    gsconv_shuffle: str = "interleave"
    depthwise_impl: str = "auto"
    eca_kernel_size: int | None = None
    se_reduction: int = 16
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    # The fields added last stay last, so that positional construction keeps its meaning.
    upsample_impl: str = "auto"
    norm: str = norms.DEFAULT_NORM
    conv_impl: str = "auto"

    @property
    def downsampling_factor(self) -> int:
        """Input H and W must be multiples of this (2 ** number of stages)."""
        return 2 ** len(self.features)

    @property
    def block_options(self) -> registry.BlockOptions:
        """The settings of the built-in blocks."""
        return registry.BlockOptions(
            gsconv_act=self.gsconv_act,
            gsconv_shuffle=self.gsconv_shuffle,
            depthwise_impl=self.depthwise_impl,
            eca_kernel_size=self.eca_kernel_size,
            se_reduction=self.se_reduction,
            norm=self.norm,
            conv_impl=self.conv_impl,
        )

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

    def group_widths(self) -> dict[str, tuple[int, int]]:
        """(input, output) channels of the first stage of each group (encoder input: 1)."""
        last = int(self.features[-1])
        return {
            "encoder": (1, int(self.features[0])),
            "bottleneck": (last, 2 * last),
            "decoder": (2 * last, last),
            "skip": (last, last),
        }

    def _check_fields(self) -> dict[str, dict[str, str]]:
        """Validates the fields and returns each group's blocks (see `registry.stage_blocks`)."""
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
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"UNet.conv_impl={self.conv_impl!r}; expected one of {CONV_IMPLS}.")
        if self.se_reduction < 1:
            raise ValueError(f"UNet.se_reduction must be >= 1, got {self.se_reduction}.")
        norms.resolve_norm(self.norm, "UNet.norm")  # Unknown names, failed imports, arguments.
        legacy = {
            "gsconv_in": _check_places(self.gsconv_in, GSCONV_PLACES, "gsconv_in"),
            "eca_in": _check_places(self.eca_in, ECA_PLACES, "eca_in"),
        }
        blocks = registry.stage_blocks(self.conv, self.attention, legacy)
        for kind, groups in blocks.items():
            for name in set(groups.values()):
                registry.resolve(kind, name, f"UNet.{kind}")  # Unknown names, failed imports.
        gsconv_groups = [g for g, name in blocks["conv"].items() if name == "gsconv"]
        if gsconv_groups:
            get_activation(self.gsconv_act)
            widths = {"encoder": self.features, "decoder": self.features}
            widths["bottleneck"] = (2 * self.features[-1],)
            odd = sorted({int(f) for g in gsconv_groups for f in widths[g] if f % 2})
            if odd:
                raise ValueError(f"GSConv needs even widths; UNet.features has odd widths {odd}.")
        return blocks

    @nn.nowrap
    def check_blocks(self) -> None:
        """Builds every stage group's blocks once on a tiny abstract input (no computation).

        A norm other than BatchNorm may not fit some layer's width (``group(G)``): the whole
        model is then also built abstractly once, at the smallest input, so every norm layer is
        checked.

        Raises:
          ValueError: naming ``UNet.conv`` or ``UNet.attention`` and the block that cannot be
            built or does not keep its shape contract (see `registry.check_block`), or
            ``UNet.norm`` and the channel count a norm cannot normalise.
        """
        blocks = self._check_fields()
        widths = self.group_widths()
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype, options=self.block_options)
        try:
            for kind, groups in blocks.items():
                for group, name in groups.items():
                    c_in, c_out = widths[group]
                    registry.check_block(
                        kind,
                        name,
                        where=f"UNet.{kind} ({group})",
                        in_channels=c_out if kind == "attention" else c_in,
                        features=c_out,
                        **common,
                    )
            if norms.parse_norm(self.norm).name != "batch":
                size = self.downsampling_factor
                jax.eval_shape(
                    lambda: self.init(jax.random.key(0), jnp.zeros((1, size, size, 1)), train=False)
                )
        except registry.NormError as error:
            raise ValueError(f"UNet.norm={self.norm!r}: {error}") from error

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Segments a batch of images.

        Args:
          x: images of shape (B, H, W, C_in), H and W multiples of ``2 ** len(features)``.
          train: BatchNorm uses (and updates) batch statistics when True; other norms do
            the same in both modes.

        Returns:
          Logits of shape (B, H, W, num_classes) in ``dtype``.
        """
        blocks = self._check_fields()
        self.check_input_shape(x.shape)
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def block(features: int, group: str, name: str) -> ConvBlock:
            return ConvBlock(
                features,
                conv=blocks["conv"][group],
                attention=blocks["attention"][group],
                options=self.block_options,
                name=name,
                **dtypes,
            )

        x = x.astype(self.dtype)
        skips = []
        for i, features in enumerate(self.features):
            x = block(features, "encoder", f"enc_{i}")(x, train=train)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = block(2 * self.features[-1], "bottleneck", "bottleneck")(x, train=train)

        skip_attention = blocks["attention"]["skip"]
        for i, (features, skip) in enumerate(zip(self.features[::-1], skips[::-1], strict=True)):
            x = Upsample(
                features, self.upsample, impl=self.upsample_impl, name=f"up_{i}", **dtypes
            )(x)
            if skip_attention != "none":
                make = registry.resolve("attention", skip_attention, "UNet.attention")
                name = f"skip_{attention_module_name(skip_attention)}_{i}"
                module = make(features, name=name, options=self.block_options, **dtypes)
                skip = registry.call_block(module, skip, train)
            x = jnp.concatenate([skip, x], axis=-1)
            x = block(features, "decoder", f"dec_{i}")(x, train=train)

        return nn.Conv(self.num_classes, (1, 1), name="head", **dtypes)(x)
