"""The bts_jax U-Net as a Flax NNX module, built from the Linen blocks through ``flax.nnx.bridge``.

The Linen ``UNet`` (docs/design.md section 2) stays the reference implementation: training,
checkpoints and the milesial importer use it. :class:`UNet` here lays the same blocks out as NNX
attributes that a user can read, replace or extend in place:

* ``encoder[i]``, ``bottleneck``, ``decoder[i]``: a :class:`Stage` whose ``block`` is the double
  convolution (Linen ``ConvBlock`` without ECA, bridged; any other attention of the zoo stays
  inside it) and whose ``eca`` is the ECA (bridged Linen ``ECA``) or ``None``. Assign any NNX
  module mapping (B, H, W, C) to (B, H, W, C) to ``eca`` to swap it, or a module with
  ``__call__(x, *, train)`` to ``block``.
* ``up[i]``: the bridged Linen ``Upsample``; ``skip_eca[i]``: ECA on the skip tensor or ``None``;
  ``skip_attention[i]``: another attention on the skip tensor (``attention="skip:..."``) or
  ``None``; ``head``: an ``nnx.Conv`` 1x1 with bias.

Decoder index i counts from the deepest stage, as in the Linen module. With the same weights
(:meth:`UNet.from_linen`) both compute the same outputs and gradients;
:func:`to_linen_variables` maps NNX state (or gradients) back to Linen ``variables``.
"""

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.nnx import bridge

from bts_jax.models import registry
from bts_jax.models import unet as linen_unet

_COLLECTIONS = {nnx.Param: "params", nnx.BatchStat: "batch_stats"}


class LinenBlock(bridge.ToNNX):
    """A Linen module with a ``train`` flag (BatchNorm inside) as an NNX module.

    ``train=True`` updates the BatchNorm running statistics in place, as NNX modules do.
    """

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies the wrapped module to (B, H, W, C_in); the output shape is the module's."""
        return super().__call__(x, train=train, mutable=["batch_stats"] if train else False)


class LinenAttention(bridge.ToNNX):
    """A Linen attention block as an NNX module, called with ``train`` where it takes it."""

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Maps (B, H, W, C) to (B, H, W, C); BatchNorm statistics update in place if training."""
        if not registry.takes_train(self.to_nnx__module):
            return super().__call__(x)
        return super().__call__(x, train=train, mutable=["batch_stats"] if train else False)


class Stage(nnx.Module):
    """A U-Net stage: a double convolution ``block`` followed by an optional ``eca``.

    Attributes:
      block: maps (B, H, W, C_in) to (B, H, W, C) with ``block(x, train=...)``.
      eca: channel attention mapping (B, H, W, C) to the same shape, or ``None``.
    """

    def __init__(self, block: nnx.Module, eca: nnx.Module | None = None):
        self.block = block
        # Marked as data even when None, so a module can be assigned to it later.
        self.eca = nnx.data(eca)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps (B, H, W, C_in) to (B, H, W, C)."""
        x = self.block(x, train=train)
        return x if self.eca is None else self.eca(x)


class UNet(nnx.Module):
    """The bts_jax U-Net (docs/design.md section 2) as an NNX module with swappable stages.

    Example::

      model = UNet(in_channels=1, features=(16, 32, 64, 128), eca_in=("encoder",),
                   rngs=nnx.Rngs(0))
      logits = model(images, train=False)  # (B, H, W, 1)

    Attributes:
      encoder: one :class:`Stage` per entry of ``features``.
      bottleneck: the :class:`Stage` of width ``2 * features[-1]``.
      up: the upsampling modules, deepest first.
      skip_eca: ECA on each skip tensor (``eca_in`` has "skip") or ``None``, deepest first.
      skip_attention: another attention on each skip tensor or ``None``, deepest first.
      decoder: the decoder :class:`Stage`, deepest first.
      head: the 1x1 convolution to ``num_classes`` logits.
    """

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs, **unet_fields: Any):
        """Builds and initialises the model.

        The initial variables are the Linen UNet's ``init`` with the key ``rngs.params()``,
        computed in one compiled call (initialising the bridged blocks one by one, eagerly,
        would dispatch every operation separately).

        Args:
          in_channels: channels of the input images (1 for grayscale MRI, 3 for RGB).
          rngs: random streams; the ``params`` (or ``default``) stream seeds the weights.
          **unet_fields: the fields of the Linen :class:`bts_jax.models.UNet` (``features``,
            ``num_classes``, ``upsample``, ``gsconv_in``, ``eca_in``, ``conv``, ``attention``,
            ``gsconv_act``, ``gsconv_shuffle``, ``depthwise_impl``, ``upsample_impl``,
            ``eca_kernel_size``, ``se_reduction``, ``norm``, ``dtype``, ``param_dtype``).

        Raises:
          ValueError: for an invalid field value, as the Linen UNet does.
          TypeError: for a field the Linen UNet does not have.
        """
        config = linen_unet.UNet(**unet_fields)
        self._build(config, in_channels)
        size = config.downsampling_factor
        image = jnp.zeros((1, size, size, in_channels), config.dtype)
        variables = jax.jit(lambda key: config.init(key, image, train=False))(rngs.params())
        self._assign(variables)

    def _build(self, config: linen_unet.UNet, in_channels: int) -> None:
        """Creates the submodules with abstract variables (shapes only)."""
        blocks = config._check_fields()  # Same validation and messages as Linen.
        self.features = tuple(int(f) for f in config.features)
        self.dtype = config.dtype
        dtypes = dict(dtype=config.dtype, param_dtype=config.param_dtype)
        options = config.block_options

        def bridged(module: nn.Module, channels: int, wrapper=bridge.ToNNX, **kwargs: Any):
            def init() -> bridge.ToNNX:
                bridged_module = wrapper(module, rngs=nnx.Rngs(0))
                # Parameter shapes depend only on the channel count: a 1x1 image will do.
                bridge.lazy_init(bridged_module, jnp.zeros((1, 1, 1, channels)), **kwargs)
                # No block draws random numbers once initialised (no dropout): dropping the
                # streams keeps the model's state to parameters and BatchNorm statistics.
                bridged_module.to_nnx__rngs = None
                return bridged_module

            return nnx.eval_shape(init)

        def attention(name: str, channels: int) -> LinenAttention:
            make = registry.resolve("attention", name, "UNet.attention")
            module = make(channels, name=None, options=options, **dtypes)
            return bridged(module, channels, LinenAttention, train=False)

        def stage(c_in: int, features: int, group: str) -> Stage:
            # ECA is the Stage's own slot; any other attention stays inside the bridged block,
            # where its Linen path (``enc_0/attention/...``) is.
            eca = blocks["attention"][group] == "eca"
            block = linen_unet.ConvBlock(
                features,
                conv=blocks["conv"][group],
                attention="none" if eca else blocks["attention"][group],
                options=options,
                **dtypes,
            )
            return Stage(
                bridged(block, c_in, LinenBlock, train=False),
                attention("eca", features) if eca else None,
            )

        widths = [*self.features, 2 * self.features[-1]]
        self.encoder = nnx.List(
            [
                stage(c_in, f, "encoder")
                for c_in, f in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
            ]
        )
        self.bottleneck = stage(widths[-2], widths[-1], "bottleneck")
        ups, skip_ecas, skip_attentions, decoder = [], [], [], []
        skip = blocks["attention"]["skip"]
        for c_in, features in zip(widths[:0:-1], widths[-2::-1], strict=True):
            up = linen_unet.Upsample(features, config.upsample, impl=config.upsample_impl, **dtypes)
            ups.append(bridged(up, c_in))
            skip_ecas.append(attention(skip, features) if skip == "eca" else None)
            other = skip not in ("eca", "none")
            skip_attentions.append(attention(skip, features) if other else None)
            decoder.append(stage(2 * features, features, "decoder"))
        self.up = nnx.List(ups)
        self.skip_eca = nnx.List(skip_ecas)
        self.skip_attention = nnx.List(skip_attentions)
        self.decoder = nnx.List(decoder)
        self.head = nnx.eval_shape(
            lambda: nnx.Conv(widths[0], config.num_classes, (1, 1), rngs=nnx.Rngs(0), **dtypes)
        )

    def _assign(self, variables: dict[str, Any]) -> None:
        """Sets every variable from Linen ``variables``, checking names and shapes."""
        expected = dict(nnx.to_flat_state(nnx.state(self, (nnx.Param, nnx.BatchStat))))
        updates = {}
        for collection in ("params", "batch_stats"):
            flat = jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0]
            for key_path, value in flat:
                linen_path = tuple(k.key for k in key_path)
                path = _nnx_path(linen_path)
                target = expected.get(path)
                if target is None or _COLLECTIONS[type(target)] != collection:
                    raise ValueError(
                        f"variables[{collection!r}] {'/'.join(linen_path)} has no place in the "
                        "NNX UNet: were the variables made for another configuration?"
                    )
                if target.shape != value.shape:
                    raise ValueError(
                        f"variables[{collection!r}] {'/'.join(linen_path)} has shape "
                        f"{value.shape}, the NNX UNet expects {target.shape}."
                    )
                updates[path] = value
        unset = [".".join(map(str, p)) for p in expected if p not in updates]
        if unset:
            raise ValueError(f"variables leave NNX UNet variables unset: {unset}.")
        nnx.update(self, nnx.from_flat_state(updates))

    @classmethod
    def from_linen(cls, model: linen_unet.UNet, variables: dict[str, Any]) -> "UNet":
        """Builds the NNX model holding the weights of a Linen ``UNet``.

        Args:
          model: the Linen module (its fields are reused).
          variables: its ``{"params": ..., "batch_stats": ...}``, for example from
            ``model.init``, a checkpoint, or :func:`bts_jax.models.import_milesial_unet`.

        Returns:
          A :class:`UNet` whose outputs and gradients equal the Linen model's.

        Raises:
          ValueError: naming the first variable that has no place, or the wrong shape, in the
            NNX model, or the NNX variables that ``variables`` leaves unset.
        """
        in_channels = _input_channels(variables["params"]["enc_0"]["conv_0"])
        fields = {f: getattr(model, f) for f in linen_unet.UNet.__dataclass_fields__}
        fields = {k: v for k, v in fields.items() if k not in ("parent", "name")}
        # Shapes only: every variable is set from ``variables`` next, so skip the initialisation.
        nnx_model = nnx.eval_shape(lambda: cls(in_channels, rngs=nnx.Rngs(0), **fields))
        nnx_model._assign(variables)
        return nnx_model

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Segments a batch of images.

        Args:
          x: images of shape (B, H, W, C_in), H and W multiples of ``2 ** len(features)``.
          train: BatchNorm uses batch statistics and updates its running ones when True.

        Returns:
          Logits of shape (B, H, W, num_classes).
        """
        linen_unet.UNet(features=self.features).check_input_shape(x.shape)
        x = x.astype(self.dtype)
        skips = []
        for stage in self.encoder:
            x = stage(x, train=train)
            skips.append(x)
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = self.bottleneck(x, train=train)
        for up, skip_eca, skip_attention, stage, skip in zip(
            self.up, self.skip_eca, self.skip_attention, self.decoder, skips[::-1], strict=True
        ):
            x = up(x)
            if skip_eca is not None:
                skip = skip_eca(skip)
            if skip_attention is not None:
                skip = skip_attention(skip, train=train)
            x = stage(jnp.concatenate([skip, x], axis=-1), train=train)
        return self.head(x)


def _input_channels(first_conv: dict[str, Any]) -> int:
    """The image channels, from the parameters of the first convolution layer of the zoo."""
    for layer, axis in (("dense", 2), ("primary", 2), ("depthwise", 3)):  # gsconv, ghost, dsconv
        if layer in first_conv:
            return int(first_conv[layer]["conv"]["kernel"].shape[axis])
    if "conv" in first_conv:  # double_conv
        return int(first_conv["conv"]["kernel"].shape[2])
    kernels = [leaf for leaf in jax.tree_util.tree_leaves(first_conv) if leaf.ndim == 4]
    if not kernels:
        raise ValueError("Cannot tell the input channels: enc_0/conv_0 holds no 4-D kernel.")
    return int(kernels[0].shape[2])  # A user's layer: its first kernel, assumed dense (HWIO).


def _nnx_path(linen_path: Sequence[str]) -> tuple:
    """Linen variable path (without the collection) -> path in the NNX :class:`UNet`."""
    top, rest = linen_path[0], tuple(linen_path[1:])
    if top == "head":
        return ("head", *rest)
    match = re.fullmatch(r"(enc|dec|up|skip_eca|skip_attention)_(\d+)", top)
    if top == "bottleneck":
        stage = ("bottleneck",)
    elif match and match.group(1) in ("up", "skip_eca", "skip_attention"):
        return (match.group(1), int(match.group(2)), *rest)
    elif match:
        stage = ("encoder" if match.group(1) == "enc" else "decoder", int(match.group(2)))
    else:
        return (top, *rest)  # Unknown: from_linen reports it.
    part = "eca" if rest[0] == "eca" else "block"
    return (*stage, part, *(rest[1:] if part == "eca" else rest))


def _linen_path(path: Sequence[Any]) -> tuple[str, ...]:
    """Path in the NNX :class:`UNet` -> Linen variable path (the inverse of ``_nnx_path``)."""
    top = path[0]
    if top in ("encoder", "decoder"):
        name, part, rest = f"{'enc' if top == 'encoder' else 'dec'}_{path[1]}", path[2], path[3:]
    elif top == "bottleneck":
        name, part, rest = "bottleneck", path[1], path[2:]
    elif top in ("up", "skip_eca", "skip_attention"):
        return (f"{top}_{path[1]}", *map(str, path[2:]))
    else:
        return tuple(map(str, path))
    return (name, *(("eca",) if part == "eca" else ()), *map(str, rest))


def to_linen_variables(state: nnx.State) -> dict[str, dict]:
    """Maps NNX :class:`UNet` state to the Linen UNet's ``variables`` layout.

    Use it on ``nnx.state(model)`` to save or evaluate an NNX-trained model with the Linen tools,
    or on the gradients from ``nnx.grad`` to compare them with Linen's. Random-number state is
    dropped.

    Args:
      state: an ``nnx.State`` of a :class:`UNet` (or of its gradients).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (a collection only if ``state`` has one) with the
      Linen parameter paths (``enc_0/conv_0/conv/kernel``, ...).
    """
    variables: dict[str, dict] = {}
    for path, variable in nnx.to_flat_state(state):
        collection = _COLLECTIONS.get(type(variable))
        if collection is None:
            continue
        tree = variables.setdefault(collection, {})
        *parents, leaf = _linen_path(path)
        for key in parents:
            tree = tree.setdefault(key, {})
        tree[leaf] = variable.get_value()
    return variables
