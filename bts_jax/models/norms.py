"""Normalisation layers by name: the registry behind ``config.model.norm``.

A norm is written as a name with optional arguments, in the style of big_vision's
preprocessing ops: ``"batch"``, ``"group(8)"``, ``"batch(momentum=0.99, epsilon=1e-3)"``, or a
user's norm by import path, ``"package.module:MyNorm"`` or ``"package.module:my_norm(4)"``.
Arguments are Python literals (:func:`parse_norm`).

Registered norms (Wu and He 2018, "Group Normalization", Fig. 2, name the family):

* ``batch(momentum=0.9, epsilon=1e-5)``: ``nn.BatchNorm`` over (B, H, W) per channel, batch
  statistics in training and running ones in evaluation (``batch_stats``); PyTorch's defaults
  (momentum 0.1 there). The only norm with running statistics.
* ``group(groups=32, epsilon=1e-5)``: per image, over (H, W) and a group of channels. A layer of
  C channels uses ``min(groups, C)`` groups, which must divide C (else :class:`NormError`); at
  powers-of-two widths any power-of-two ``groups`` fits, and a 1-channel map gets 1 group.
* ``instance(epsilon=1e-5)``: per image and channel over (H, W) (GroupNorm with C groups).
* ``layer(epsilon=1e-5)``: per image over (H, W, C) (GroupNorm with 1 group; Wu and He's
  "LN" of a convolution network, not a per-pixel norm over channels, which would leave a
  1-channel map constant).
* ``none``: no layer; a convolution followed by it gets a bias (it has no norm to shift it).

Every norm layer keeps the name BatchNorm had at its place (``bn``, ``spatial_bn``), so a
layer's parameters stay at one path whatever the norm.

A norm is a factory ``factory(*args, channels, train, name, dtype, param_dtype, **kwargs) ->
nn.Module | None`` (``args``/``kwargs`` from the spec; ``None`` = no layer), or a Linen module
class, constructed as ``Class(*args, name=..., **kwargs)`` (``channels``, ``dtype`` and
``param_dtype`` where it declares them). The module maps (B, ..., C) to the same shape and is
called as ``module(x)``, with ``train=`` when its ``__call__`` takes it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from bts_jax.models.registry import NormError, _field_names, call_block
from bts_jax.naming.calls import import_path, parse_arguments

# docs/design.md section 1: eps 1e-5 and PyTorch momentum 0.1, i.e. Flax momentum 0.9.
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9
DEFAULT_NORM = "batch"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
# A name or import path, then optional (arguments).
_SPEC = re.compile(r"\s*([A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)\s*(?:\((.*)\))?\s*", re.DOTALL)

NormFactory = Callable[..., nn.Module | None]
_NORMS: dict[str, NormFactory] = {}


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """A parsed norm setting.

    Attributes:
      name: a registered name or an import path ``package.module:attribute``.
      args: positional arguments (Python literals).
      kwargs: keyword arguments as sorted ``(name, value)`` pairs (hashable).
    """

    name: str
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


def parse_norm(spec: str, where: str = "config.model.norm") -> NormSpec:
    """Parses ``"name"``, ``"name(1, key=2)"`` or ``"pkg.mod:attr(...)"`` into a `NormSpec`.

    Args:
      spec: the setting's value.
      where: the setting's name, for error messages.

    Returns:
      The spec; arguments are evaluated as Python literals (numbers, strings, tuples...).

    Raises:
      ValueError: naming ``where``, when ``spec`` is not of that form.
    """
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"{where}={spec!r} is not a norm: write a name with optional literal arguments, "
            "e.g. 'batch', 'group(8)', 'batch(momentum=0.99)' or 'package.module:MyNorm'."
        )
    name, arguments = match.group(1), match.group(2)
    if arguments is None or not arguments.strip():
        return NormSpec(name)
    try:
        args, kwargs = parse_arguments(arguments)
    except ValueError as error:
        raise ValueError(
            f"{where}={spec!r}: the arguments of {name!r} must be Python literals, e.g. "
            f"'group(8)' or 'batch(momentum=0.99)' ({error})."
        ) from error
    return NormSpec(name, args, tuple(sorted(kwargs)))


def register_norm(name: str, factory: NormFactory | type[nn.Module], *, replace=False) -> None:
    """Makes ``name`` a norm of ``config.model.norm`` (and of every block's ``norm`` field).

    Args:
      name: lower-case letters, digits and ``_``.
      factory: ``factory(*args, channels, train, name, dtype, param_dtype, **kwargs)``
        returning a module mapping (B, ..., channels) to the same shape (``None``: no layer),
        or a Linen module class (see the module docstring).
      replace: allow replacing a registered norm of that name.

    Raises:
      ValueError: an invalid or (without ``replace``) taken name.
      TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"A norm name must be lower-case letters, digits and '_', got {name!r}.")
    if not callable(factory):
        raise TypeError(f"register_norm({name!r}, ...) needs a module class or a factory.")
    if name in _NORMS and not replace:
        raise ValueError(f"The norm {name!r} is registered already (replace=True).")
    _NORMS[name] = factory
    resolve_norm.cache_clear()  # A replaced norm must not be served from the cache.


def norm_names() -> tuple[str, ...]:
    """The registered norm names, sorted."""
    return tuple(sorted(_NORMS))


def _class_factory(cls: type[nn.Module]) -> NormFactory:
    """A factory constructing a user's norm class by the module docstring's class contract."""
    fields = _field_names(cls)

    def factory(*args, channels, train, name, dtype, param_dtype, **kwargs):
        del train  # Passed to __call__ by `call_block` when it takes it.
        extra = {"channels": channels, "dtype": dtype, "param_dtype": param_dtype}
        kwargs.update({k: v for k, v in extra.items() if k in fields})
        return cls(*args, name=name, **kwargs)

    return factory


def _lookup(name: str, where: str) -> Any:
    """The registered or imported norm ``name`` (a factory or a module class)."""
    if ":" not in name:
        if name not in _NORMS:
            raise ValueError(
                f"{where}: unknown norm {name!r}; registered: {', '.join(norm_names())}, or an "
                "import path 'package.module:name'."
            )
        return _NORMS[name]
    try:
        norm = import_path(name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{where}: cannot import the norm {name!r} ({type(error).__name__}: {error}); "
            "write 'package.module:name' with the module on the Python path."
        ) from error
    if not callable(norm):
        raise ValueError(f"{where}: {name!r} is neither a Flax module class nor a factory.")
    return norm


def _check_arguments(norm: Any, parsed: NormSpec, spec: str, where: str) -> None:
    """Raises a ValueError naming ``where`` when ``norm`` does not take the spec's arguments."""
    kwargs = dict(parsed.kwargs)
    reserved = {"channels", "train", "name", "dtype", "param_dtype"} & set(kwargs)
    if reserved:
        raise ValueError(f"{where}={spec!r}: {sorted(reserved)} are set by the model, not here.")
    try:
        signature = inspect.signature(norm)
    except (TypeError, ValueError):  # Some callables have no signature: let the call decide.
        return
    model_set = {"name": ""}
    if not isinstance(norm, type):
        model_set.update(channels=1, train=False, dtype=None, param_dtype=None)
    try:
        signature.bind(*parsed.args, **model_set, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"{where}={spec!r}: {error}; the norm {parsed.name!r} takes {signature}."
        ) from error


@functools.cache
def resolve_norm(spec: str, where: str = "config.model.norm") -> NormFactory:
    """The factory of a norm setting, its arguments bound and checked against its signature.

    Args:
      spec: e.g. ``"group(8)"`` (see :func:`parse_norm`).
      where: the setting's name, for error messages.

    Returns:
      ``build(*, channels, train, name, dtype, param_dtype) -> nn.Module | None``.

    Raises:
      ValueError: naming ``where``: a malformed spec, an unknown name (listing the registered
        ones), an import that fails, or arguments the norm does not take.
    """
    parsed = parse_norm(spec, where)
    norm = _lookup(parsed.name, where)
    _check_arguments(norm, parsed, spec, where)
    if isinstance(norm, type) and issubclass(norm, nn.Module):
        norm = _class_factory(norm)
    return functools.partial(norm, *parsed.args, **dict(parsed.kwargs))


def has_norm(spec: str) -> bool:
    """Whether ``spec`` adds a layer: False for ``"none"`` (then convolutions take a bias)."""
    return parse_norm(spec).name != "none"


def apply_norm(spec: str, x: jax.Array, *, train: bool, name: str, dtype, param_dtype) -> jax.Array:
    """Normalises ``x`` with the norm ``spec``, as a submodule ``name`` of the calling module.

    Call it inside a ``@nn.compact`` method: the layer is created there, so its parameters sit at
    ``<caller>/<name>``.

    Args:
      spec: the norm setting (``"batch"``, ``"group(8)"``, ...).
      x: (B, ..., C) activations; C sets the layer's width.
      train: training mode (BatchNorm: batch statistics, updating the running ones).
      name: the layer's name (``"bn"`` where BatchNorm sat).
      dtype: computation dtype.
      param_dtype: parameter dtype.

    Returns:
      The normalised (B, ..., C) array (``x`` itself for ``"none"``).

    Raises:
      NormError: the norm cannot normalise C channels.
      ValueError: an invalid ``spec`` (see :func:`resolve_norm`).
    """
    build = resolve_norm(spec, "norm")
    layer = build(
        channels=x.shape[-1], train=train, name=name, dtype=dtype, param_dtype=param_dtype
    )
    return x if layer is None else call_block(layer, x, train)


def batch_norm(
    *,
    channels,
    train,
    name,
    dtype,
    param_dtype,
    momentum: float = BATCH_NORM_MOMENTUM,
    epsilon: float = BATCH_NORM_EPSILON,
) -> nn.BatchNorm:
    """``batch``: BatchNorm, running statistics in evaluation (Ioffe and Szegedy 2015)."""
    del channels
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def group_count(groups: int, channels: int) -> int:
    """The groups ``group(groups)`` uses for C channels: ``min(groups, C)``, dividing C.

    Args:
      groups: the requested number of groups G >= 1.
      channels: the layer's channels C.

    Raises:
      NormError: naming G and C, when ``min(G, C)`` does not divide C.
    """
    if not isinstance(groups, int) or groups < 1:
        raise NormError(f"group(groups) takes a positive integer, got {groups!r}.")
    used = min(groups, channels)
    if channels % used:
        raise NormError(
            f"group({groups}) cannot normalise a layer of {channels} channels: it uses "
            f"min(groups, channels) = {used} groups, which must divide {channels}. Choose a group "
            "count that divides every width of the model (e.g. a power of two)."
        )
    return used


def group_norm(
    groups: int = 32, *, channels, train, name, dtype, param_dtype, epsilon: float = 1e-5
) -> nn.GroupNorm:
    """``group``: GroupNorm (Wu and He 2018) with :func:`group_count` groups."""
    del train
    return nn.GroupNorm(
        num_groups=group_count(groups, channels),
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def instance_norm(
    *, channels, train, name, dtype, param_dtype, epsilon: float = 1e-5
) -> nn.GroupNorm:
    """``instance``: per image and channel over the positions (Ulyanov et al. 2016)."""
    del train, channels
    return nn.GroupNorm(
        num_groups=None,
        group_size=1,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(*, channels, train, name, dtype, param_dtype, epsilon: float = 1e-5) -> nn.GroupNorm:
    """``layer``: per image over positions and channels (GroupNorm with one group)."""
    del train, channels
    return nn.GroupNorm(
        num_groups=1, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name
    )


def no_norm(*, channels, train, name, dtype, param_dtype) -> None:
    """``none``: no layer."""
    del channels, train, name, dtype, param_dtype


register_norm("batch", batch_norm)
register_norm("group", group_norm)
register_norm("instance", instance_norm)
register_norm("layer", layer_norm)
register_norm("none", no_norm)
