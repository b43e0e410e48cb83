"""The trainer's loss function, from ``config.loss``: one name, or a weighted sum of them.

``config.loss.name`` is a registered loss (`bts_jax.train.registry.LOSSES`: ``bce_dice``,
``bce``, ``dice``, ``focal``, ``tversky``, ``focal_tversky``), an import path
``package.module:function``, or a weighted sum ``"focal(gamma=2):1,dice:1"``. Empty (the default,
and every config from before the registry) is ``bce_dice`` with ``config.loss.bce_weight`` and
``config.loss.dice_weight``, which are today's numbers and metric keys exactly.

The built loss maps ``(logits (B, H, W, C), labels (B, H, W), valid (B,) or None)`` to
``(loss, metrics)``: the float32 scalar and ``{"loss": loss, <term metric>: value, ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from bts_jax.train import losses as _losses  # noqa: F401  (registers the pixel losses)
from bts_jax.train import region_losses as _region_losses  # noqa: F401  (registers Dice etc.)
from bts_jax.train.registry import LOSSES, parse_terms

WHERE = "config.loss.name"
LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, dict]]
# The legacy fields' defaults: a config naming its loss must leave them so (they would be ignored).
_LEGACY_DEFAULTS = {"bce_weight": 1.0, "dice_weight": 1.0}


def legacy_loss_name(loss_config: Mapping[str, Any]) -> str:
    """The ``config.loss.name`` that a config's ``bce_weight`` / ``dice_weight`` mean.

    Args:
      loss_config: ``config.loss`` (a ConfigDict or a mapping).

    Returns:
      ``loss_config.name`` when set, else ``bce_dice(bce_weight=W1,dice_weight=W2)``.
    """
    name = loss_config.get("name", "") or ""
    if name:
        return name
    bce = float(loss_config.get("bce_weight", 1.0))
    dice = float(loss_config.get("dice_weight", 1.0))
    return f"bce_dice(bce_weight={bce!r},dice_weight={dice!r})"


def _metric_key(name: str, taken: set[str]) -> str:
    base = LOSSES.metadata(name).get("metric") or f"{name.rpartition(':')[2]}_loss"
    key, k = base, 2
    while key in taken or key == "loss":
        key, k = f"{base}_{k}", k + 1
    return key


def build_loss(spec: str, where: str = WHERE) -> LossFn:
    """The loss function of a setting: a name, an import path, or a weighted sum of them.

    Args:
      spec: e.g. ``"bce_dice"``, ``"focal(gamma=2):1,dice:1"``, ``"my_losses:edge:0.5,dice"``.
      where: the setting, for messages.

    Returns:
      ``loss_fn(logits, labels, valid) -> (loss, metrics)``: ``metrics`` holds ``"loss"`` and
      each term's unweighted value under its metric key (``bce`` -> ``cross_entropy``, ``dice``
      -> ``dice_loss``, others ``<name>_loss``; a term that returns its own parts, as
      ``bce_dice``, logs those instead).

    Raises:
      ValueError: naming ``where``: malformed text, an unknown name or argument.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"{where}={spec!r}: give a loss name such as 'bce_dice' or 'bce:1,dice:1'."
        )
    try:
        terms = parse_terms(spec)
    except ValueError as error:
        raise ValueError(
            f"{where}={spec!r}: {error}; expected 'name', 'name(key=value)' or a weighted sum "
            "'name:weight,name:weight'."
        ) from None
    bound, taken = [], set()
    for call, weight in terms:
        key = _metric_key(call.name, taken)
        taken.add(key)
        bound.append((LOSSES.bind(call, where, spec), weight, key))
    single = len(bound) == 1 and bound[0][1] == 1.0

    def loss_fn(logits, labels, valid=None):
        total, metrics = None, {}
        for function, weight, key in bound:
            value = function(logits, labels, valid)
            if isinstance(value, tuple):  # A loss that logs its own parts (bce_dice).
                value, parts = value
                metrics.update({k: v for k, v in parts.items() if k != "loss"})
            else:
                metrics[key] = value
            # A single unweighted term is returned as it is, so bce_dice stays today's number.
            term = value if single else weight * value
            total = term if total is None else total + term
        metrics["loss"] = total
        return total, metrics

    return loss_fn


def check_loss_config(loss_config: Mapping[str, Any], num_classes: int) -> None:
    """Checks ``config.loss`` at set-up: the names, their arguments, and one abstract call.

    The loss runs on abstract ``(2, 8, 8, num_classes)`` logits (`jax.eval_shape`, nothing is
    computed), so a user's loss that breaks the contract stops the run before anything compiles.

    Args:
      loss_config: ``config.loss``.
      num_classes: ``config.model.num_classes``, the logits' channels.

    Raises:
      ValueError: naming the setting.
    """
    name = loss_config.get("name", "") or ""
    if name:
        for field, default in _LEGACY_DEFAULTS.items():
            value = loss_config.get(field, default)
            if value != default:
                raise ValueError(
                    f"config.loss.{field}={value} applies only when {WHERE} is empty (the legacy "
                    f"BCE + Dice); with {WHERE}={name!r} write the weights in the name, e.g. "
                    f"'bce:{loss_config.get('bce_weight', 1.0)},dice:"
                    f"{loss_config.get('dice_weight', 1.0)}', and leave config.loss.{field} at "
                    f"{default}."
                )
    spec = legacy_loss_name(loss_config)
    loss_fn = build_loss(spec)
    logits = jax.ShapeDtypeStruct((2, 8, 8, num_classes), jnp.float32)
    labels = jax.ShapeDtypeStruct((2, 8, 8), jnp.int32)
    valid = jax.ShapeDtypeStruct((2,), jnp.bool_)
    try:
        loss, _ = jax.eval_shape(loss_fn, logits, labels, valid)
    except Exception as error:  # A user's loss may fail in any way: name the setting.
        raise ValueError(
            f"{WHERE}={spec!r} fails on logits of shape {logits.shape} "
            f"({type(error).__name__}: {error}); a loss maps (logits (B, H, W, C), labels "
            "(B, H, W) int, valid (B,) bool) to a float32 scalar."
        ) from error
    if loss.shape != () or loss.dtype != jnp.float32:
        raise ValueError(
            f"{WHERE}={spec!r} returns {loss.dtype}{list(loss.shape)}; a loss returns a float32 "
            "scalar."
        )


def loss_from_config(loss_config: Mapping[str, Any]) -> LossFn:
    """The trainer's loss function of ``config.loss`` (see `build_loss`, `legacy_loss_name`).

    Args:
      loss_config: ``config.loss``.

    Returns:
      ``loss_fn(logits, labels, valid) -> (loss, metrics)``.
    """
    return build_loss(legacy_loss_name(loss_config))
