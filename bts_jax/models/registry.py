"""Attention and convolution blocks by name: the registry the U-Net's stages are built from.

A U-Net stage is two convolution layers and an optional attention block (docs/design.md
section 9). Which ones is a name per stage group: ``config.model.conv`` for the encoder,
bottleneck and decoder, ``config.model.attention`` for those and the skip tensors. A name is one
registered here (:func:`register_attention`, :func:`register_conv`; the zoo registers itself from
``bts_jax.models.attention`` and ``bts_jax.models.convs``) or an import path
``package.module:Class`` (docs/extending.md).

A registered block is a Flax Linen module class or a factory:

* attention: ``factory(channels, *, name, dtype, param_dtype, options) -> nn.Module``; the
  module maps (B, H, W, channels) to (B, H, W, channels);
* convolution: ``factory(features, *, strides, name, dtype, param_dtype, options) -> nn.Module``;
  the module maps (B, H, W, C_in) to (B, ceil(H / strides), ceil(W / strides), features).

``name`` must be passed on to the module (it fixes the parameter path), ``options`` is the
model's :class:`BlockOptions`. A module class is constructed as ``Class(channels=C)`` (attention)
or ``Class(features=F, strides=s)`` (convolution), with ``name``, and ``dtype`` and
``param_dtype`` where the class declares them (``channels`` and ``strides`` too: a class without
``strides`` serves stride 1 only). Every module is called as ``module(x, train=train)``, or
``module(x)`` when its ``__call__`` takes no ``train``.
"""

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bts_jax.naming.calls import import_path

CONV_GROUPS = ("encoder", "bottleneck", "decoder")
ATTENTION_GROUPS = (*CONV_GROUPS, "skip")
# The blocks the switches from before the registry turn on where they list a group.
LEGACY_BLOCKS = {"conv": ("gsconv", "gsconv_in"), "attention": ("eca", "eca_in")}
DEFAULT_BLOCKS = {"conv": "double_conv", "attention": "none"}
_NAME = re.compile(r"[a-z][a-z0-9_]*")

Factory = Callable[..., nn.Module]


class NormError(ValueError):
    """A norm that cannot normalise a layer (``bts_jax.models.norms``: e.g. its group count)."""


_REGISTRY: dict[str, dict[str, Factory]] = {"attention": {}, "conv": {}}


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """The settings of the built-in blocks (``config.model``; docs/design.md section 9).

    Attributes:
      gsconv_act: GSConv's activation (``"mish"``, ``"silu"`` or ``"relu"``).
      gsconv_shuffle: GSConv's channel shuffle (``"interleave"``, ``"legacy"`` or ``"none"``).
      depthwise_impl: how depthwise convolutions are computed (``"auto"``, ``"grouped"``,
        ``"dense"``): the same function and parameters either way.
      eca_kernel_size: ECA's 1D kernel size, ``None`` for the ECA-Net rule.
      se_reduction: reduction ratio r of the squeeze-excite MLPs (``se``, ``cbam``'s channel
        attention, ``scse``'s channel branch): ``max(C // r, min(C, 8))`` hidden units.
      norm: the norm of every block that has one (``bts_jax.models.norms``: ``"batch"``,
        ``"group(8)"``, ...); a user's factory may read it too.
      conv_impl: how dense convolutions are computed (``"auto"``, ``"xla"``, ``"onednn"``):
        the same function and parameters either way.
    """

    gsconv_act: str = "mish"
    gsconv_shuffle: str = "interleave"
    depthwise_impl: str = "auto"
    eca_kernel_size: int | None = None
    se_reduction: int = 16
    norm: str = "batch"
    conv_impl: str = "auto"


def _register(kind: str, name: str, block: Any, replace: bool) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in ATTENTION_GROUPS:
        raise ValueError(
            f"A {kind} block name must be lower-case letters, digits and '_' (not a stage group "
            f"{ATTENTION_GROUPS}), got {name!r}."
        )
    if not callable(block):
        raise TypeError(f"register_{kind}({name!r}, ...) needs a module class or a factory.")
    if name in _REGISTRY[kind] and not replace:
        raise ValueError(f"The {kind} block {name!r} is registered already (replace=True).")
    _REGISTRY[kind][name] = block


def register_attention(name: str, block: type[nn.Module] | Factory, *, replace=False) -> None:
    """Makes ``name`` an attention block of the U-Net (``config.model.attention=name``).

    Args:
      name: lower-case letters, digits and ``_``.
      block: a Linen module class, constructed as ``block(channels=C, name=...)`` (with
        ``dtype``/``param_dtype`` where it declares them), or a factory
        ``block(channels, *, name, dtype, param_dtype, options)`` returning a module. Either
        module maps (B, H, W, C) to (B, H, W, C), called with ``train=`` if it takes it.
      replace: allow replacing a registered block of that name.

    Raises:
      ValueError: an invalid or (without ``replace``) taken name.
    """
    _register("attention", name, block, replace)


def register_conv(name: str, block: type[nn.Module] | Factory, *, replace=False) -> None:
    """Makes ``name`` a convolution layer of the U-Net (``config.model.conv=name``).

    A U-Net stage applies two such layers (C_in -> F, then F -> F).

    Args:
      name: lower-case letters, digits and ``_``.
      block: a Linen module class, constructed as ``block(features=F, strides=s, name=...)``
        (``strides``, ``dtype``, ``param_dtype`` where it declares them), or a factory
        ``block(features, *, strides, name, dtype, param_dtype, options)`` returning a module.
        Either maps (B, H, W, C_in) to (B, ceil(H / s), ceil(W / s), F), called with
        ``train=`` if it takes it.
      replace: allow replacing a registered block of that name.

    Raises:
      ValueError: an invalid or (without ``replace``) taken name.
    """
    _register("conv", name, block, replace)


def attention_names() -> tuple[str, ...]:
    """The registered attention names, sorted."""
    return tuple(sorted(_REGISTRY["attention"]))


def conv_names() -> tuple[str, ...]:
    """The registered convolution names, sorted."""
    return tuple(sorted(_REGISTRY["conv"]))


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _class_factory(kind: str, cls: type[nn.Module], where: str) -> Factory:
    """A factory constructing ``cls`` by the class contract of the module docstring."""
    fields = _field_names(cls)

    def factory(size: int, *, name, dtype, param_dtype, options, strides: int = 1) -> nn.Module:
        del options  # A user's class takes its settings from its own defaults.
        kwargs: dict[str, Any] = {"name": name}
        size_field = "channels" if kind == "attention" else "features"
        if size_field in fields:
            kwargs[size_field] = size
        if "strides" in fields:
            kwargs["strides"] = strides
        elif strides != 1:
            raise ValueError(
                f"{where}: {cls.__name__} has no `strides` field, needed for {strides}."
            )
        kwargs.update(
            {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if k in fields}
        )
        return cls(**kwargs)

    return factory


def resolve(kind: str, name: str, where: str) -> Factory:
    """The factory of a block name or import path (the module docstring's signature).

    Args:
      kind: ``"attention"`` or ``"conv"``.
      name: a registered name, or ``package.module:Class`` (a module class or a factory).
      where: the setting the name comes from, for error messages (``config.model.attention``).

    Raises:
      ValueError: naming ``where``, for an unknown name or a path that cannot be imported.
    """
    if ":" not in name:
        if name not in _REGISTRY[kind]:
            raise ValueError(
                f"{where}: unknown {kind} block {name!r}; registered: "
                f"{', '.join(sorted(_REGISTRY[kind]))}, or an import path 'package.module:Class'."
            )
        block = _REGISTRY[kind][name]
    else:
        module_name, _, attribute = name.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"{where}: {name!r} is not an import path 'package.module:Class'.")
        try:
            block = import_path(name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"{where}: cannot import the {kind} block {name!r} "
                f"({type(error).__name__}: {error}); expected 'package.module:Class' importable "
                "from the Python path (the working directory, or an installed package)."
            ) from None
    if isinstance(block, type) and issubclass(block, nn.Module):
        return _class_factory(kind, block, where)
    if not callable(block):
        raise ValueError(f"{where}: {name!r} is neither a Flax module class nor a factory.")
    return block


def takes_train(module: nn.Module) -> bool:
    """Whether ``module.__call__`` accepts a ``train`` keyword argument."""
    parameters = inspect.signature(type(module).__call__).parameters.values()
    return any(p.name == "train" or p.kind is p.VAR_KEYWORD for p in parameters)


def call_block(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """Calls a block with ``train=train`` if its ``__call__`` takes it, else on ``x`` alone."""
    return module(x, train=train) if takes_train(module) else module(x)


def parse_groups(value: str, kind: str, where: str) -> dict[str, str]:
    """Parses a block setting into ``{group: name}`` for the groups it sets.

    ``""`` sets none; a bare name sets encoder, bottleneck and decoder; ``group:name`` pairs set
    one group each and win over a bare name in the same setting (``"se,decoder:eca"``).

    Args:
      value: the setting, comma-separated.
      kind: ``"attention"`` (groups encoder, bottleneck, decoder, skip) or ``"conv"`` (not skip).
      where: the setting's name, for error messages.

    Raises:
      ValueError: naming ``where``: an unknown group, a group set twice, two bare names.
    """
    groups = ATTENTION_GROUPS if kind == "attention" else CONV_GROUPS
    if not isinstance(value, str):
        raise TypeError(f"{where} takes a string such as 'se' or 'encoder:se', got {value!r}.")
    bare, pairs = None, {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        group, _, name = item.partition(":")
        if group in ATTENTION_GROUPS:
            if group not in groups:
                raise ValueError(f"{where}={value!r}: no {kind} group {group!r}; groups: {groups}.")
            if not name or group in pairs:
                raise ValueError(f"{where}={value!r}: give group {group!r} one name, once.")
            pairs[group] = name
        elif bare is None:
            bare = item
        else:
            raise ValueError(
                f"{where}={value!r}: two names without a group ({bare!r}, {item!r}); a bare name "
                f"sets {', '.join(CONV_GROUPS)}, 'group:name' sets one of {groups}."
            )
    return {**dict.fromkeys(CONV_GROUPS if bare else (), bare), **pairs}


def stage_blocks(
    conv: str, attention: str, legacy: Mapping[str, frozenset[str]], where: str = "UNet."
) -> dict[str, dict[str, str]]:
    """The convolution and attention name of every stage group.

    ``gsconv_in`` / ``eca_in`` (``legacy``) give GSConv / ECA to the groups they list and
    ``double_conv`` / ``none`` to the others; ``conv`` / ``attention`` then set the groups they
    name (:func:`parse_groups`). One combination is refused: naming GSConv (ECA) for a group
    that a non-empty ``gsconv_in`` (``eca_in``) leaves out, as the two settings then disagree
    on where that block goes.

    Args:
      conv: the convolution setting (``""`` = as ``gsconv_in`` says).
      attention: the attention setting (``""`` = as ``eca_in`` says).
      legacy: ``{"gsconv_in": groups, "eca_in": groups}``.
      where: prefix of the setting names in errors (``"UNet."`` or ``"config.model."``).

    Returns:
      ``{"conv": {group: name}, "attention": {group: name}}`` over every group.

    Raises:
      ValueError: naming the settings involved.
    """
    blocks = {}
    for kind, value in (("conv", conv), ("attention", attention)):
        legacy_block, legacy_field = LEGACY_BLOCKS[kind]
        places = legacy[legacy_field]
        groups = ATTENTION_GROUPS if kind == "attention" else CONV_GROUPS
        chosen = parse_groups(value, kind, f"{where}{kind}")
        outside = [g for g, name in chosen.items() if name == legacy_block and g not in places]
        if places and outside:
            raise ValueError(
                f"{where}{kind}={value!r} puts {legacy_block} in {', '.join(outside)}, which "
                f"{where}{legacy_field}={','.join(sorted(places))!r} leaves out. Say where "
                f"{legacy_block} goes in one of them: e.g. clear {where}{legacy_field} to let "
                f"{where}{kind} decide every group."
            )
        default = DEFAULT_BLOCKS[kind]
        blocks[kind] = {g: chosen.get(g, legacy_block if g in places else default) for g in groups}
    return blocks


class _Probe(nn.Module):
    """Holds one block under the name ``block``, to shape-check it at set-up."""

    build: Callable[[str], nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return call_block(self.build("block"), x, train)


def check_block(
    kind: str,
    name: str,
    *,
    where: str,
    in_channels: int,
    features: int,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    options: BlockOptions = BlockOptions(),
) -> None:
    """Builds one block and runs it on an abstract (1, 8, 8, C_in) input (no computation).

    Args:
      kind: ``"attention"`` (``in_channels`` must equal ``features``) or ``"conv"``.
      name: the block's name or import path.
      where: the setting, for error messages.
      in_channels: input channels.
      features: output channels.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      options: the built-in blocks' settings.

    Raises:
      ValueError: naming ``where`` and the block, when the block cannot be built, fails on the
        input, or returns another shape than (1, 8, 8, features).
    """
    factory = resolve(kind, name, where)
    common = dict(dtype=dtype, param_dtype=param_dtype, options=options)
    if kind == "attention":
        build = functools.partial(factory, features, **common)
        contract = "an attention block maps (B, H, W, C) to the same shape"
    else:
        build = functools.partial(factory, features, strides=1, **common)
        contract = "a convolution block maps (B, H, W, C_in) to (B, H, W, features) at stride 1"
    x = jax.ShapeDtypeStruct((1, 8, 8, in_channels), dtype)
    expected = (1, 8, 8, features)
    try:
        out, _ = jax.eval_shape(
            lambda x: _Probe(lambda n: build(name=n), parent=None).init_with_output(
                jax.random.key(0), x, train=False
            ),
            x,
        )
    except NormError:
        raise  # The norm's setting, not the block's, is to blame: its caller names it.
    except Exception as error:  # A user's block may fail in any way: name the setting.
        raise ValueError(
            f"{where}: the {kind} block {name!r} failed on an input of shape {x.shape} "
            f"({type(error).__name__}: {error}); {contract}."
        ) from error
    if getattr(out, "shape", None) != expected:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"{where}: the {kind} block {name!r} maps an input of shape {x.shape} to {got}, "
            f"expected {expected}: {contract} (docs/extending.md)."
        )
