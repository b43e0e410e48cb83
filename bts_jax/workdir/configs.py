"""A run's config on disk: ``config.json``, the guard that keeps it, and ``config_history.jsonl``.

A workdir with a checkpoint belongs to the config that wrote it. `check_config` compares a new
config field by field with ``config.json``; any change outside `SAFE_CHANGES` is refused with a
diff, unless the caller allows it (``train.py --allow_config_change``). Every config a run has
used is kept in ``config_history.jsonl``, one row ``{"step", "changed", "config"}`` per change,
``step`` being the checkpoint it took effect from (`record_config`). A workdir without a
checkpoint takes the new config as it is: nothing was trained with the old one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from bts_jax import jsonio
from bts_jax.config_tools import flatten_config, lists_to_tuples
from bts_jax.workdir.layout import CONFIG_FILE, CONFIG_HISTORY_FILE, seed_workdirs_in

# Fields a resumed run may change without --allow_config_change, and why each is safe: none changes
# the parameters a step computes from the restored state, so the run stays the run the checkpoints
# belong to.
SAFE_CHANGES: dict[str, str] = {
    "num_epochs": (
        "only an increase, to extend a run; the learning-rate schedule is rebuilt for the new "
        "total (a cosine decay is stretched to the new end, so its rate jumps up at the resume)"
    ),
    "log_every_steps": "how often step metrics are fetched and checked",
    "num_predictions": "how many validation images are drawn at the end",
    "eval_every_epochs": "which later epochs are validated (and so can become the best save)",
    "checkpoint.max_to_keep": "how many of the latest saves are kept",
    "checkpoint.every_steps": "when later saves are written",
    "data.cache": "whether decoded images are kept in memory (the same values either way)",
    "model.depthwise_impl": (
        "how depthwise convolutions are computed (grouped or block-diagonal dense): the same "
        "function and parameters, results equal up to float rounding"
    ),
    "model.upsample_impl": (
        "how the 2x2 up-convolutions are computed (transposed convolution or one matrix "
        "product): the same function and parameters, results equal up to float rounding"
    ),
    "model.conv_impl": (
        "whose kernels compute the dense convolutions (XLA's or oneDNN's): the same function "
        "and parameters, results equal up to float rounding"
    ),
}


_MISSING = "<absent>"


# Fields added to the config after workdirs were first written, with the value that a config.json
# without them implies, so such a workdir resumes (and its sweep cell compares) unchanged.
IMPLIED_FIELDS: dict[str, Any] = {
    "num_seeds": 1,
    # The block registry (docs/design.md section 9): "" leaves the blocks to gsconv_in / eca_in.
    "model.conv": "",
    "model.attention": "",
    "model.se_reduction": 16,
    "model.upsample_impl": "auto",
    # XLA's convolutions (bts_jax/models/onednn came later).
    "model.conv_impl": "xla",
    # The loss registry: "" is bce_dice with loss.bce_weight / loss.dice_weight, as before.
    "loss.name": "",
    # The augmentation ops string (bts_jax/data/augment_config.py): "flip" leaves augmentation
    # to the switches of data.augment, which such a config.json holds.
    "data.augmentations": "flip",
    # Weight averaging (bts_jax.train.ema): off.
    "ema_decay": 0.0,
    "ema_start_step": 0,
    # Norms by name (bts_jax/models/norms.py): BatchNorm everywhere before; the head's bias at 0.
    "model.norm": "batch",
    "model.output_bias_prior": None,
}


class ConfigChangedError(ValueError):
    """A resumed run's config differs from the one its checkpoints were trained with."""


def _averages_weights(ema_decay: Any) -> bool:
    return isinstance(ema_decay, int | float) and ema_decay > 0


def unresumable_changes(changes: list[ConfigChange]) -> list[ConfigChange]:
    """The changes no resume can take, even with ``--allow_config_change``.

    Turning weight averaging on or off (``ema_decay`` between 0 and a positive value) changes
    what a checkpoint holds: the state of a run with averaging has the average, one without has
    none, so the saved state cannot be continued as the other. Changing a positive decay, or
    ``ema_start_step``, keeps the state's layout and is an ordinary (unsafe) change.

    Args:
      changes: from `diff_configs`.

    Returns:
      The changes that cannot be resumed (empty when every change can).
    """
    return [
        c
        for c in changes
        if c.field == "ema_decay" and _averages_weights(c.old) != _averages_weights(c.new)
    ]


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    """Writes ``config`` as ``<workdir>/config.json`` (sorted keys, tuples as lists).

    The file is written whole under another name and renamed, so a run killed mid-write leaves
    the previous config, never half of one.

    Args:
      config: the run's config.
      workdir: the run's directory (must exist).

    Returns:
      The written path.
    """
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    jsonio.write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))
    return path


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads the config a workdir was trained with (``<workdir>/config.json``).

    Args:
      workdir: a directory written by ``train.py``.

    Returns:
      The run's ConfigDict (JSON lists turned back into tuples).

    Raises:
      FileNotFoundError: ``workdir`` does not exist or holds no ``config.json`` (the message
        names it, or lists the seeds' workdirs when it holds a ``num_seeds > 1`` run).
    """
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"Workdir not found: {workdir}")
    path = os.path.join(workdir, CONFIG_FILE)
    seed_runs = [] if os.path.isfile(path) else seed_workdirs_in(workdir)
    if seed_runs:
        raise FileNotFoundError(
            f"{workdir} holds the runs of a config.num_seeds > 1 training, one workdir per seed: "
            f"pass one of them as --workdir ({', '.join(seed_runs)})."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{workdir} is not a bts_jax workdir: it has no {CONFIG_FILE}. Pass the --workdir "
            "that train.py wrote."
        )
    with open(path) as f:
        return ml_collections.ConfigDict(lists_to_tuples(json.load(f)))


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One field that differs between two configs.

    Attributes:
      field: the dotted field name, e.g. ``"optimizer.learning_rate"``.
      old: the saved value (``"<absent>"`` for a field the saved config lacks).
      new: the new value (``"<absent>"`` for a field the new config lacks).
    """

    field: str
    old: Any
    new: Any

    @property
    def safe(self) -> bool:
        """Whether the change is in `SAFE_CHANGES` (num_epochs: only an increase)."""
        if self.field not in SAFE_CHANGES:
            return False
        if self.field == "num_epochs":
            return isinstance(self.old, int) and isinstance(self.new, int) and self.new > self.old
        return True


def diff_configs(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """The fields that differ between two flat configs (see `flatten_config`).

    Args:
      saved: the flat config the checkpoints were trained with.
      new: the flat config of the new run.

    Returns:
      One `ConfigChange` per differing field, sorted by field.
    """
    changes = []
    for field in sorted(set(saved) | set(new)):
        old, value = saved.get(field, _MISSING), new.get(field, _MISSING)
        if old != value:
            changes.append(ConfigChange(field, old, value))
    return changes


def format_changes(changes: list[ConfigChange]) -> str:
    """A readable diff, one line per field: ``field: old -> new`` (safe ones marked).

    Args:
      changes: from `diff_configs`.

    Returns:
      The text.
    """
    return "\n".join(
        f"  {c.field}: {c.old!r} -> {c.new!r}{'  (safe)' if c.safe else ''}" for c in changes
    )


def _non_finite_fields(flat: Mapping[str, Any]) -> list[str]:
    return [k for k, v in flat.items() if isinstance(v, float) and not math.isfinite(v)]


def read_saved_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The flat config of ``<workdir>/config.json``, or None when there is none.

    Args:
      workdir: the run's directory.

    Returns:
      The flat config (see `flatten_config`) or None; fields of `IMPLIED_FIELDS` that the file
      lacks have their implied value.
    """
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        flat = flatten_config(json.load(f))
    return dict(sorted({**IMPLIED_FIELDS, **flat}.items()))


def check_config(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    checkpoint_step: int | None,
    *,
    allow_change: bool = False,
) -> list[ConfigChange]:
    """Compares a run's config with the one its workdir's checkpoints were trained with.

    Reads only ``config.json``; writes nothing (see `record_config`).

    Args:
      config: the new run's config.
      workdir: the run's directory.
      checkpoint_step: the step of the workdir's latest checkpoint, None when it has none (then
        any config is accepted: nothing was trained with the saved one).
      allow_change: accept changes outside `SAFE_CHANGES` (``--allow_config_change``).

    Returns:
      The changes from the saved config (empty for a new workdir or an identical config).

    Raises:
      ValueError: a config field is NaN or infinite (it could not be saved as JSON).
      ConfigChangedError: an unsafe change without ``allow_change``, the message listing the
        changed fields with their old and new values; or, even with ``allow_change``, a change
        of `unresumable_changes` (weight averaging turned on or off), named.
    """
    new = flatten_config(config)
    bad = _non_finite_fields(new)
    if bad:
        raise ValueError(f"Config fields {bad} are NaN or infinite; give finite values.")
    saved = read_saved_config(workdir)
    if saved is None or checkpoint_step is None:
        return []
    changes = diff_configs(saved, new)
    blocked = unresumable_changes(changes)
    if blocked:
        raise ConfigChangedError(
            f"{os.fspath(workdir)} holds checkpoints (latest step {checkpoint_step}) of a run "
            f"{'with' if _averages_weights(blocked[0].old) else 'without'} a moving average of "
            f"its weights; config.ema_decay {blocked[0].old!r} -> {blocked[0].new!r} turns "
            "weight averaging on or off, which changes what the checkpoints hold, so no resume "
            "(not even with --allow_config_change) can take it. Train in a new --workdir, or keep "
            f"config.ema_decay={blocked[0].old!r} (a positive decay can change to another "
            "positive one with --allow_config_change)."
        )
    unsafe = [c for c in changes if not c.safe]
    if unsafe and not allow_change:
        raise ConfigChangedError(
            f"{os.fspath(workdir)} holds checkpoints (latest step {checkpoint_step}) trained with "
            f"another config; resuming would mix the two. Changed fields:\n"
            f"{format_changes(changes)}\n"
            "Use another --workdir for a new run, undo the changes, or pass "
            "--allow_config_change to resume with them (recorded in "
            f"{CONFIG_HISTORY_FILE}). Safe changes: {', '.join(SAFE_CHANGES)} (num_epochs: "
            "only raised)."
        )
    if changes:
        logging.warning(
            "Resuming %s at step %d with a changed config:\n%s",
            os.fspath(workdir),
            checkpoint_step,
            format_changes(changes),
        )
    return changes


def read_config_history(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``<workdir>/config_history.jsonl`` (empty when there is none).

    Args:
      workdir: the run's directory.

    Returns:
      Rows ``{"step": int, "changed": [fields], "config": {...}}``, oldest first.
    """
    path = os.path.join(os.fspath(workdir), CONFIG_HISTORY_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def record_config(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    checkpoint_step: int | None,
    changes: list[ConfigChange],
) -> None:
    """Keeps every config the run has used in ``config_history.jsonl``; writes no config.json.

    A run without a checkpoint starts the history afresh (one row at step 0); a resumed run with
    changes appends ``{"step": checkpoint_step, "changed": [fields], "config": ...}``. A workdir
    from before the history existed first gets a row for its saved config.

    Args:
      config: the run's config (already checked by `check_config`).
      workdir: the run's directory.
      checkpoint_step: the latest checkpoint's step, None for a new run.
      changes: from `check_config`.
    """
    workdir = os.fspath(workdir)
    history_path = os.path.join(workdir, CONFIG_HISTORY_FILE)
    new_config = json.loads(config.to_json_best_effort())
    if checkpoint_step is None:
        rows = [{"step": 0, "changed": [], "config": new_config}]
    else:
        rows = read_config_history(workdir)
        if not rows:
            with open(os.path.join(workdir, CONFIG_FILE)) as f:
                rows = [{"step": 0, "changed": [], "config": json.load(f)}]
        if changes:
            rows.append(
                {
                    "step": int(checkpoint_step),
                    "changed": [c.field for c in changes],
                    "config": new_config,
                }
            )
    # Written whole and renamed: a kill mid-write leaves the old file, never half of one.
    jsonio.write_jsonl(history_path, rows)
