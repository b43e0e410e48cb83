"""Recipe parts by name: the registry that losses, optimisers and schedules are chosen from.

A setting names a part as ``name`` or ``name(arguments)`` (the grammar of
`bts_jax.naming.calls`, shared with norms, augmentation ops and blocks): ``focal(gamma=2)``,
``tversky(0.3, 0.7)``, ``cosine(final=0.05)``. Arguments are Python literals (``true`` /
``false`` also work, for the command line); positional ones fill the part's keyword arguments in
the order its function declares them. A name is registered (`Registry.register`) or the import
path of a function of your own, ``package.module:function``, as for the model's blocks
(`bts_jax.models.registry`). Every error names the setting and lists the registered names.

A loss may be a weighted sum of terms, ``"bce:1,dice:1"`` or ``"focal(gamma=2):1,dice:0.5"``
(`parse_terms`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from bts_jax.naming.calls import NAME, Call, import_path, parse_call, split_top_level


def _weight(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_terms(text: str) -> list[tuple[Call, float]]:
    """Parses a weighted sum ``"term:weight,term:weight"``; a term without a weight weighs 1.

    A term is a `parse_call` text; an import path keeps its own colon (``my_losses:edge:0.5`` is
    ``my_losses:edge`` weighted 0.5).

    Args:
      text: the setting's value.

    Returns:
      ``[(call, weight), ...]`` in the order written, at least one.

    Raises:
      ValueError: malformed text or an empty term (the caller adds the setting's name).
    """
    terms = []
    for item in split_top_level(text, ","):
        head, colon, tail = item.rpartition(":")
        weight = _weight(tail) if colon and ")" not in tail else None
        term = head if weight is not None else item
        if not term.strip():
            raise ValueError(f"empty term in {text!r}")
        terms.append((parse_call(term), 1.0 if weight is None else weight))
    return terms


def _keyword_parameters(function: Callable, skip: int) -> list[inspect.Parameter]:
    """The parameters of ``function`` that a setting may set: all but the first ``skip``."""
    parameters = list(inspect.signature(function).parameters.values())
    return [p for p in parameters[skip:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


class Registry:
    """Functions of one kind of recipe part, by name.

    Attributes:
      kind: what the functions are (``"loss"``), for messages.
      signature: the contract of a function of this kind, for messages.
      skip: how many leading positional parameters the trainer passes (a setting sets the rest).
    """

    def __init__(self, kind: str, signature: str, skip: int):
        self.kind, self.signature, self.skip = kind, signature, skip
        self._functions: dict[str, Callable] = {}
        self._metadata: dict[str, dict[str, Any]] = {}

    def register(self, name: str, function: Callable, *, replace: bool = False, **metadata):
        """Makes ``name`` choose ``function``.

        Args:
          name: lower-case letters, digits and ``_``.
          function: a function with this kind's signature.
          replace: allow replacing a registered function of that name.
          **metadata: what the builder of this kind reads (e.g. a loss's metric key).

        Returns:
          ``function``.

        Raises:
          ValueError: an invalid or (without ``replace``) taken name.
        """
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(
                f"A {self.kind} name must be lower-case letters, digits, '_': {name!r}"
            )
        if not callable(function):
            raise TypeError(f"The {self.kind} {name!r} must be a function.")
        if name in self._functions and not replace:
            raise ValueError(f"The {self.kind} {name!r} is registered already (replace=True).")
        self._functions[name] = function
        self._metadata[name] = metadata
        return function

    def unregister(self, name: str) -> None:
        """Removes ``name`` (tests and docs use it to undo a registration)."""
        self._functions.pop(name, None)
        self._metadata.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._functions))

    def metadata(self, name: str) -> dict[str, Any]:
        """What ``name`` was registered with (empty for an import path)."""
        return dict(self._metadata.get(name, {}))

    def unknown(self, where: str, value: str, name: str) -> ValueError:
        """The error for an unknown name: the setting, the name and every valid name."""
        return ValueError(
            f"{where}={value!r}: unknown {self.kind} {name!r}; registered: "
            f"{', '.join(self.names())}, or an import path 'package.module:function' of a "
            f"function {self.signature}."
        )

    def function(self, name: str, where: str, value: str) -> Callable:
        """The function of a registered name or an import path.

        Args:
          name: the name or ``package.module:function``.
          where: the setting, for messages (``config.loss.name``).
          value: the setting's whole value, for messages.

        Raises:
          ValueError: naming ``where``: an unknown name or a path that cannot be imported.
        """
        if ":" not in name:
            if name not in self._functions:
                raise self.unknown(where, value, name)
            return self._functions[name]
        try:
            function = import_path(name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"{where}={value!r}: cannot import the {self.kind} {name!r} "
                f"({type(error).__name__}: {error}); expected 'package.module:function' "
                "importable from the Python path (the working directory, or a package)."
            ) from None
        if not callable(function):
            raise ValueError(f"{where}={value!r}: {name!r} is not a function.")
        return function

    def bind(
        self, call: Call, where: str, value: str, defaults: dict[str, Any] | None = None
    ) -> Callable:
        """The function of ``call`` with its arguments bound (checked against its signature).

        Args:
          call: a parsed part.
          where: the setting, for messages.
          value: the setting's whole value, for messages.
          defaults: keyword arguments passed where the function takes them and ``call`` does not
            set them (settings that predate the registry, e.g. ``optimizer.weight_decay``).

        Returns:
          ``function`` with the arguments bound (``functools.partial``), or the function itself
          when there are none.

        Raises:
          ValueError: naming ``where``: unknown name, unknown or surplus arguments.
        """
        function = self.function(call.name, where, value)
        parameters = _keyword_parameters(function, self.skip)
        names = [p.name for p in parameters]
        if len(call.args) > len(names):
            raise ValueError(
                f"{where}={value!r}: {call.name} takes at most {len(names)} arguments "
                f"({', '.join(names) or 'none'}), got {len(call.args)}."
            )
        kwargs = dict(zip(names, call.args, strict=False))
        for key, item in call.kwargs:
            if key not in names:
                raise ValueError(
                    f"{where}={value!r}: {call.name} has no argument {key!r}; its arguments: "
                    f"{', '.join(names) or 'none'}."
                )
            if key in kwargs:
                raise ValueError(f"{where}={value!r}: {call.name}'s {key!r} is given twice.")
            kwargs[key] = item
        for key, item in (defaults or {}).items():
            if key in names and key not in kwargs:
                kwargs[key] = item
        return functools.partial(function, **kwargs) if kwargs else function


LOSSES = Registry(
    "loss", "(logits (B, H, W, C), labels (B, H, W) int, valid (B,) bool or None) -> scalar", 3
)
OPTIMIZERS = Registry("optimizer", "(learning_rate: optax.Schedule) -> GradientTransformation", 1)
SCHEDULES = Registry("schedule", "(peak_value: float, decay_steps: int) -> optax.Schedule", 2)


def register_loss(name: str, loss: Callable, *, metric: str | None = None, replace=False):
    """Makes ``name`` a loss of ``config.loss.name``.

    Args:
      name: lower-case letters, digits and ``_``.
      loss: ``loss(logits (B, H, W, C), labels (B, H, W) int, valid (B,) bool or None,
        **arguments)`` returning a float32 scalar (or, as ``bce_dice`` does,
        ``(scalar, {metric: scalar})`` to log its parts). Its keyword arguments are what a
        setting may pass, ``name(key=value)``.
      metric: the key its value is logged under in the step metrics (``name + "_loss"`` if None).
      replace: allow replacing a registered loss of that name.

    Returns:
      ``loss``.
    """
    return LOSSES.register(name, loss, replace=replace, metric=metric or f"{name}_loss")


def register_optimizer(name: str, optimizer: Callable, *, replace=False):
    """Makes ``name`` an optimiser of ``config.optimizer.name``.

    Args:
      name: lower-case letters, digits and ``_``.
      optimizer: ``optimizer(learning_rate, **arguments) -> optax.GradientTransformation``;
        ``learning_rate`` is the run's schedule (step -> rate).
      replace: allow replacing a registered optimiser of that name.

    Returns:
      ``optimizer``.
    """
    return OPTIMIZERS.register(name, optimizer, replace=replace)


def register_schedule(name: str, schedule: Callable, *, replace=False):
    """Makes ``name`` a learning-rate schedule of ``config.optimizer.schedule``.

    Args:
      name: lower-case letters, digits and ``_``.
      schedule: ``schedule(peak_value, decay_steps, **arguments) -> optax.Schedule``, a function
        of the steps after the warmup (0 to ``decay_steps``); the trainer puts the linear warmup
        of ``config.optimizer.warmup_epochs`` in front of it.
      replace: allow replacing a registered schedule of that name.

    Returns:
      ``schedule``.
    """
    return SCHEDULES.register(name, schedule, replace=replace)
