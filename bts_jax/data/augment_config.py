"""Which augmentation ops a config trains with: ``config.data.augmentations``, or the old switches.

``config.data.augmentations`` is the ops string of `bts_jax.data.augment_ops` (``""`` = no
augmentation). Before it, ``config.data.augment`` held switches and ranges (`LEGACY_AUGMENT`:
``flip``, ``rot90``, ``affine`` with ``max_rotate_deg`` / ``max_scale`` / ``max_translate``,
``brightness_contrast`` with ``max_brightness`` / ``max_contrast``). They keep their meaning, bit
for bit: they map onto the ops string (`legacy_augmentations`), in augment_pair's old order, and
the ops ``flip``, ``rot90``, ``affine`` and ``brightness_contrast`` draw as augment_pair did
(tests/data/augment_golden.npz was written by the code before the registry).

Which one decides (`augmentations_of`):

* switches at their defaults (``configs/default.py``: flip on, the rest off) or absent: the
  string decides;
* switches changed, string at its default ``"flip"`` (or absent, as in a ``config.json`` written
  before the string existed): the switches decide, mapped;
* both changed: an error giving the one spelling to keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bts_jax.data._tf import tf
from bts_jax.data.augment_ops import SETTING, AugmentOp, apply_ops, check_ops, parse_ops

LEGACY_SETTING = "config.data.augment"
# configs/default.py's switches and ranges before the ops string.
LEGACY_AUGMENT: dict[str, Any] = {
    "flip": True,
    "rot90": False,
    "affine": False,
    "max_rotate_deg": 10.0,
    "max_scale": 0.1,
    "max_translate": 0.05,
    "brightness_contrast": False,
    "max_brightness": 0.1,
    "max_contrast": 0.1,
}
# The ops string of LEGACY_AUGMENT: configs/default.py's, and what a config.json without the
# field implies (bts_jax.workdir.configs.IMPLIED_FIELDS).
DEFAULT_AUGMENTATIONS = "flip"


def _as_dict(section: Any) -> dict[str, Any]:
    return dict(section.items())


def legacy_augmentations(augment: Mapping[str, Any]) -> str:
    """The ops string of the old switches, in augment_pair's order.

    Args:
      augment: ``config.data.augment``; missing keys take `LEGACY_AUGMENT`'s values.

    Returns:
      E.g. ``"flip|affine(rotate=10.0,scale=0.1,translate=0.05)"``; ``""`` with every switch off.

    Raises:
      ValueError: an unknown key, named, with the valid ones.
    """
    unknown = sorted(set(augment) - set(LEGACY_AUGMENT))
    if unknown:
        raise ValueError(
            f"{LEGACY_SETTING}.{unknown[0]}: unknown key; the old switches are "
            f"{', '.join(LEGACY_AUGMENT)}. New augmentations go in {SETTING} (README, "
            "'Configs'), e.g. --config.data.augmentations='flip_lr|rot90|noise(0.03)'."
        )
    a = {**LEGACY_AUGMENT, **augment}
    ops = [name for name in ("flip", "rot90") if a[name]]
    if a["affine"]:
        ops.append(
            f"affine(rotate={float(a['max_rotate_deg'])!r},scale={float(a['max_scale'])!r},"
            f"translate={float(a['max_translate'])!r})"
        )
    if a["brightness_contrast"]:
        ops.append(
            f"brightness_contrast(brightness={float(a['max_brightness'])!r},"
            f"contrast={float(a['max_contrast'])!r})"
        )
    return "|".join(ops)


def augmentations_of(data: Mapping[str, Any]) -> tuple[str, str]:
    """The ops string a data config trains with, and the setting that gave it.

    Args:
      data: ``config.data`` (a ConfigDict, or the dict of a ``config.json``).

    Returns:
      ``(ops string, setting)``; the setting (``config.data.augmentations``, or
      ``config.data.augment`` for mapped switches) is for error messages.

    Raises:
      ValueError: an unknown switch, or both spellings changed (the message gives the one
        string that says both).
    """
    spec = data.get("augmentations")
    section = data.get("augment")
    if section is None:
        return (DEFAULT_AUGMENTATIONS if spec is None else spec), SETTING
    augment = _as_dict(section)
    legacy = legacy_augmentations(augment)
    where = f"{LEGACY_SETTING} (mapped onto {SETTING}={legacy!r})"
    if spec is None:
        return legacy, where
    if {**LEGACY_AUGMENT, **augment} == LEGACY_AUGMENT:
        return spec, SETTING
    if spec == DEFAULT_AUGMENTATIONS:
        return legacy, where
    changed = ", ".join(
        f"{key}={value!r}" for key, value in augment.items() if value != LEGACY_AUGMENT[key]
    )
    raise ValueError(
        f"{SETTING}={spec!r} and the old switches {LEGACY_SETTING}.* ({changed}) both set the "
        f"augmentation. Keep one: the switches alone are {SETTING}={legacy!r}; with the string, "
        f"leave {LEGACY_SETTING}.* at their defaults."
    )


def config_ops(data: Mapping[str, Any]) -> list[AugmentOp]:
    """The parsed ops a data config trains with (`augmentations_of`, `parse_ops`).

    Args:
      data: ``config.data``.

    Returns:
      The ops in order; empty = no augmentation.

    Raises:
      ValueError: naming the setting, for an unknown op, bad arguments or conflicting spellings.
    """
    spec, where = augmentations_of(data)
    return parse_ops(spec, where)


def check_augmentations(data: Mapping[str, Any]) -> list[AugmentOp]:
    """Parses a data config's ops and runs each once on a tiny pair (`check_ops`), at set-up.

    Args:
      data: ``config.data``.

    Returns:
      The ops in order.

    Raises:
      ValueError: naming the setting and the op: every error `config_ops` raises, and an op that
        fails on the probe pair or breaks its contract (shapes, dtypes, a binary mask, [0, 1]).
    """
    spec, where = augmentations_of(data)
    ops = parse_ops(spec, where)
    check_ops(ops, where)
    return ops


def augment_pair(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, augment: Mapping[str, Any]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Augments one pair by the old switches of ``config.data.augment``, as before the registry.

    The ops of `legacy_augmentations` (flips, rot90, affine, brightness/contrast, each switchable);
    new code passes an ops string to `bts_jax.data.augment_ops.parse_ops` and `apply_ops`.

    Args:
      image: float32 (S, S, 1) in [0, 1].
      mask: uint8 (S, S, 1) with values {0, 1}.
      seed: int32/int64 (2,), the example's seed.
      augment: ``config.data.augment``.

    Returns:
      (image float32 (S, S, 1) in [0, 1], mask uint8 (S, S, 1) in {0, 1}).
    """
    ops = parse_ops(legacy_augmentations(_as_dict(augment)), LEGACY_SETTING)
    return apply_ops(image, mask, seed, ops)
