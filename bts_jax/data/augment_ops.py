"""Training augmentation by name: an ordered list of ops, ``config.data.augmentations``.

The setting is a string of ops separated by ``|``, applied left to right, each a name with
optional arguments in Python syntax, as big_vision's preprocessing strings::

    "flip_lr|flip_ud|rot90|affine(rotate=10,scale=0.1,translate=0.05)|gamma(0.7,1.5)|noise(0.03)"

A name is one registered here (the built-ins of `bts_jax.data.augment_zoo`, or
:func:`register_op`) or the import path ``package.module:function`` of a user's op. An op is a
function; its signature says its kind (docs/extending.md):

* geometric, ``op(image, mask, seed, *args) -> (image, mask)``: moves image and mask together;
* intensity, ``op(image, seed, *args) -> image``: the image only (the mask is not passed).

``image`` is float32 (S, S, 1) in [0, 1], ``mask`` uint8 (S, S, 1) in {0, 1}, ``seed`` int (2,).
Augmentation runs on the training split exactly when the list is not empty.

Random streams. The pipeline draws an example's seed from (config.seed, epoch, the example's
position in the sorted split). Each op folds into it a number of its own, derived from its name
and its occurrence among the ops of that name (`op_stream`), never from its place in the list:
adding, removing or moving an op leaves the draws of the ops of every other name as they were
(and of the earlier ops of its own name).

The old switches ``config.data.augment.*`` map onto the ops string, with the very draws of before
(`bts_jax.data.augment_config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from bts_jax.data._tf import tf
from bts_jax.data.augment_zoo import BUILTIN_OPS
from bts_jax.naming.calls import import_path, parse_arguments, split_top_level

SETTING = "config.data.augmentations"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_OP = re.compile(r"\s*([A-Za-z_][\w.]*(?::[\w.]+)?)\s*(?:\((.*)\))?\s*", re.DOTALL)
_REGISTRY: dict[str, Callable[..., Any]] = dict(BUILTIN_OPS)

# The streams the four augmentations of augment_pair drew from before the registry
# (fold_in(seed, 1..4)). The first op of each of these names keeps its number, so that configs of
# either spelling draw exactly as before; the table is closed: every other op's number is hashed.
_LEGACY_STREAMS = {"flip": 1, "rot90": 2, "affine": 3, "brightness_contrast": 4}
_FIRST_HASHED_STREAM = 1 << 16  # hashed numbers never meet the legacy ones


@dataclasses.dataclass(frozen=True)
class AugmentOp:
    """One parsed op of the list.

    Attributes:
      text: the op as written, e.g. ``"gamma(0.7,1.5)"`` (for error messages).
      name: its registered name or import path.
      fn: the op function.
      args: positional arguments after ``seed``.
      kwargs: keyword arguments, as ``(name, value)`` pairs.
      geometric: whether it takes (and returns) the mask.
      stream: the number folded into the example's seed for this op (`op_stream`).
    """

    text: str
    name: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: tuple
    geometric: bool
    stream: int

    def __call__(self, image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor):
        """Applies the op with the example's ``seed`` (int (2,)); returns (image, mask)."""
        op_seed = tf.random.experimental.stateless_fold_in(seed, self.stream)
        if self.geometric:
            return self.fn(image, mask, op_seed, *self.args, **dict(self.kwargs))
        return self.fn(image, op_seed, *self.args, **dict(self.kwargs)), mask


def register_op(name: str, op: Callable[..., Any], *, replace: bool = False) -> None:
    """Makes ``name`` an augmentation op (``config.data.augmentations="...|name|..."``).

    Args:
      name: lower-case letters, digits and ``_``.
      op: a geometric ``op(image, mask, seed, *args)`` or intensity ``op(image, seed, *args)``
        function (the module docstring's contract).
      replace: allow replacing an op of that name.

    Raises:
      ValueError: an invalid or (without ``replace``) taken name.
      TypeError: ``op`` is not callable.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"An op name must be lower-case letters, digits and '_', got {name!r}.")
    if not callable(op):
        raise TypeError(f"register_op({name!r}, ...) needs a function.")
    if name in _REGISTRY and not replace:
        raise ValueError(f"The augmentation op {name!r} is registered already (replace=True).")
    _REGISTRY[name] = op


def op_names() -> tuple[str, ...]:
    """The registered op names, sorted."""
    return tuple(sorted(_REGISTRY))


def op_stream(name: str, occurrence: int) -> int:
    """The number an op folds into the example's seed.

    sha256 rather than ``hash``, which Python salts per process: the draws must not change
    between runs, hosts or Python versions.

    Args:
      name: the op's name or import path.
      occurrence: how many ops of that name come before it in the list.

    Returns:
      An int in [1, 2**31): the legacy number of `_LEGACY_STREAMS` for the first ``flip``,
      ``rot90``, ``affine`` and ``brightness_contrast``, else a hash of (name, occurrence) >= 2**16.
    """
    if occurrence == 0 and name in _LEGACY_STREAMS:
        return _LEGACY_STREAMS[name]
    digest = hashlib.sha256(f"{name}#{occurrence}".encode()).digest()
    span = (1 << 31) - _FIRST_HASHED_STREAM
    return _FIRST_HASHED_STREAM + int.from_bytes(digest[:8], "big") % span


def _valid_names() -> str:
    return f"{', '.join(op_names())}, or an import path 'package.module:function'"


def resolve_op(name: str, where: str = SETTING) -> Callable[..., Any]:
    """The function of an op name or import path.

    Args:
      name: a registered name, or ``package.module:function``.
      where: the setting the name comes from, for error messages.

    Returns:
      The op function (the module docstring's contract).

    Raises:
      ValueError: naming ``where`` and listing the valid names, for an unknown name or a path
        that cannot be imported.
    """
    if ":" not in name:
        if name not in _REGISTRY:
            raise ValueError(f"{where}: unknown augmentation op {name!r}; valid: {_valid_names()}.")
        return _REGISTRY[name]
    try:
        op = import_path(name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{where}: cannot import the augmentation op {name!r} ({type(error).__name__}: "
            f"{error}); valid: {_valid_names()} importable from the Python path."
        ) from None
    if not callable(op):
        raise ValueError(f"{where}: {name!r} is not a function; valid: {_valid_names()}.")
    return op


def is_geometric(op: Callable[..., Any]) -> bool:
    """Whether an op is geometric: its signature has a parameter named ``mask``.

    Args:
      op: an op function.

    Returns:
      True for ``op(image, mask, seed, ...)``, False for ``op(image, seed, ...)``.
    """
    return "mask" in inspect.signature(op).parameters


def split_ops(spec: str) -> list[str]:
    """The ops of a string, split at the ``|`` outside parentheses and quotes.

    Args:
      spec: an ops string, e.g. ``"flip|noise(0.03)"``.

    Returns:
      The ops' texts, stripped, e.g. ``["flip", "noise(0.03)"]`` (``[""]`` for ``""``).
    """
    try:
        parts = split_top_level(spec, "|")
    except ValueError:
        # Unbalanced: leave the text whole, so parse_ops names the op it cannot read.
        parts = [spec]
    return [part.strip() for part in parts]


def _parse_arguments(text: str, inner: str, where: str) -> tuple[tuple, tuple]:
    """Literal positional and keyword arguments of ``name(inner)``."""
    try:
        return parse_arguments(inner)
    except ValueError as error:
        raise ValueError(
            f"{where}: cannot read the arguments of {text!r} ({error}); "
            "write them as Python literals, e.g. 'affine(rotate=10,scale=0.1)'."
        ) from None


def _signature_text(name: str, op: Callable[..., Any], geometric: bool) -> str:
    params = list(inspect.signature(op).parameters.values())[3 if geometric else 2 :]
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in params]
    return f"{name}({', '.join(str(p) for p in bare)})"


def parse_ops(spec: str, where: str = SETTING) -> list[AugmentOp]:
    """Parses an ops string (the module docstring's grammar); ``""`` gives no op.

    Args:
      spec: e.g. ``"flip_lr|affine(rotate=10)|noise(0.03)"``.
      where: the setting it comes from, for error messages.

    Returns:
      The ops in order, each with its stream (`op_stream`).

    Raises:
      ValueError: naming ``where``: a malformed op, an unknown name (the valid ones listed), or
        arguments the op's signature does not take.
    """
    if not isinstance(spec, str):
        raise ValueError(f"{where} takes a string such as 'flip_lr|rot90', got {spec!r}.")
    if not spec.strip():
        return []
    ops, seen = [], {}
    for text in split_ops(spec):
        match = _OP.fullmatch(text)
        if not text or not match:
            raise ValueError(
                f"{where}={spec!r}: cannot read the op {text!r}; write 'name' or "
                f"'name(arguments)' between '|', a name being one of {_valid_names()}."
            )
        name, inner = match.group(1), match.group(2) or ""
        op = resolve_op(name, f"{where}={spec!r}")
        args, kwargs = _parse_arguments(text, inner, f"{where}={spec!r}")
        geometric = is_geometric(op)
        try:
            inspect.signature(op).bind(*(None,) * (3 if geometric else 2), *args, **dict(kwargs))
        except TypeError as error:
            raise ValueError(
                f"{where}={spec!r}: bad arguments in {text!r} ({error}); it takes "
                f"{_signature_text(name, op, geometric)}."
            ) from None
        stream = op_stream(name, seen.get(name, 0))
        seen[name] = seen.get(name, 0) + 1
        ops.append(AugmentOp(text, name, op, args, kwargs, geometric, stream))
    return ops


def apply_ops(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, ops: Sequence[AugmentOp]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies ``ops`` in order to one training pair (in the tf.data graph or eagerly).

    Args:
      image: float32 (S, S, 1) in [0, 1].
      mask: uint8 (S, S, 1) in {0, 1}.
      seed: int (2,), the example's seed; each op draws from its own fold of it.
      ops: from `parse_ops`.

    Returns:
      (image float32 (S, S, 1) in [0, 1], mask uint8 (S, S, 1) in {0, 1}).
    """
    size = int(image.shape[0])
    for op in ops:
        image, mask = op(image, mask, seed)
    return tf.ensure_shape(image, [size, size, 1]), tf.ensure_shape(mask, [size, size, 1])


def check_ops(ops: Sequence[AugmentOp], where: str = SETTING, size: int = 16) -> None:
    """Runs every op once, eagerly, on a tiny pair, and checks its contract.

    Catches what only running shows (an argument of the wrong type or out of range, a user's op
    that breaks its contract) before any graph or model is built.

    Args:
      ops: from `parse_ops`.
      where: the setting, for error messages.
      size: the side of the probe pair.

    Raises:
      ValueError: naming ``where`` and the op.
    """
    # A tumour in the top-left quarter, so that moving or interpolating the mask shows.
    inside = tf.range(size) < size // 2
    mask = tf.cast(inside[:, None, None] & inside[None, :, None], tf.uint8)
    image = tf.cast(mask, tf.float32) * 0.5 + 0.25
    seed = tf.constant([0, 0], tf.int64)
    for op in ops:
        try:
            out_image, out_mask = op(image, mask, seed)
        except Exception as error:  # A user's op may fail in any way: name the setting.
            raise ValueError(
                f"{where}: the op {op.text!r} failed on a ({size}, {size}, 1) pair "
                f"({type(error).__name__}: {error})."
            ) from error
        problems = _contract_problems(out_image, out_mask, size)
        if problems:
            kind = "geometric op returns (image, mask)" if op.geometric else "intensity op returns"
            raise ValueError(
                f"{where}: the op {op.text!r} {problems}; a {kind} float32 (S, S, 1) in [0, 1]"
                + (" and a uint8 (S, S, 1) mask in {0, 1}" if op.geometric else "")
                + " (docs/extending.md)."
            )


def _describe(x: Any) -> str:
    return f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}".strip()


def _contract_problems(image: Any, mask: Any, size: int) -> str:
    shape = (size, size, 1)
    if getattr(image, "shape", None) != shape or getattr(image, "dtype", None) != tf.float32:
        return f"returned an image {_describe(image)}"
    if getattr(mask, "shape", None) != shape or getattr(mask, "dtype", None) != tf.uint8:
        return f"returned a mask {_describe(mask)}"
    values = set(tf.unique(tf.reshape(mask, [-1]))[0].numpy().tolist())
    if not values <= {0, 1}:
        return f"made the mask non-binary (values {sorted(values)})"
    low, high = float(tf.reduce_min(image)), float(tf.reduce_max(image))
    if low < 0.0 or high > 1.0:
        return f"left the image's range [0, 1] (values in [{low:g}, {high:g}])"
    return ""
