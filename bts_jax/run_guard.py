"""Guards of a run's workdir: it can be written, one run uses it at a time, its config stays put.

`bts_jax.train_lib.train_and_evaluate` runs these before it builds or compiles anything:

1. `prepare_workdir`: the folder is created and a probe file written and removed, so a workdir
   whose parent is a file, that is read-only or on a full disk fails at once with the path and the
   reason.
2. `WorkdirLock`: an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for the run's lifetime,
   with the holder's pid and host written in it. A second run on the same workdir stops at once
   and names the holder. The OS drops the lock when its process dies (even by ``kill -9``), so a
   lock file left by a killed run is taken over, with a warning naming the dead holder. In a
   multi-host run each process locks its own file (``.lock`` for process 0, ``.lock.<i>`` for
   process i): on a shared filesystem the processes of one run do not block each other, and every
   process of a second launch stops at once instead of waiting for peers that stopped. flock works
   across hosts on NFSv4 and Lustre; where the filesystem cannot lock at all, the run goes on
   without a lock and logs a warning.
3. `check_config`: a workdir with a checkpoint belongs to the config that wrote it. A new config is
   compared field by field with ``config.json``; any change outside `SAFE_CHANGES` is refused with
   a diff, unless the caller allows it (``train.py --allow_config_change``). Every config a run has
   used is kept in ``config_history.jsonl``, one row ``{"step", "changed", "config"}`` per change,
   ``step`` being the checkpoint it took effect from (`record_config`). A workdir without a
   checkpoint takes the new config as it is: nothing was trained with the old one.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from bts_jax.checkpointing import CONFIG_FILE

LOCK_FILE = ".lock"
CONFIG_HISTORY_FILE = "config_history.jsonl"

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
}

_MISSING = "<absent>"

# Fields added to the config after workdirs were first written, with the value that a config.json
# without them implies, so such a workdir resumes (and its sweep cell compares) unchanged.
IMPLIED_FIELDS: dict[str, Any] = {"num_seeds": 1, "model.upsample_impl": "auto"}


class WorkdirNotWritableError(OSError):
    """The workdir cannot be created or written (the message gives the path and the reason)."""


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir's lock."""


class ConfigChangedError(ValueError):
    """A resumed run's config differs from the one its checkpoints were trained with."""


# ----------------------------------------------------------------------------- writable


def _blocking_file(path: str) -> str | None:
    # The nearest existing ancestor that is a file, not a folder: what makes makedirs fail.
    parent = path
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent if parent and not os.path.isdir(parent) else None


def prepare_workdir(workdir: str | os.PathLike) -> str:
    """Creates ``workdir`` if needed and checks that files can be written in it.

    A probe file of 64 KiB is written, synced and removed, so a missing permission, a read-only
    or full filesystem, or a parent that is a file fails here, before any compilation.

    Args:
      workdir: the run's directory.

    Returns:
      The absolute path of the workdir.

    Raises:
      WorkdirNotWritableError: naming the path and the reason.
    """
    path = os.path.abspath(os.fspath(workdir))
    blocking = _blocking_file(path)
    if blocking is not None:
        raise WorkdirNotWritableError(
            errno.ENOTDIR, f"Cannot create the workdir {path}: {blocking} is a file, not a folder."
        )
    probe = os.path.join(path, f".write_probe.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise WorkdirNotWritableError(
            e.errno, f"Cannot write in the workdir {path}: {e.strerror or e}."
        ) from e
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    return path


# ----------------------------------------------------------------------------- lock


def lock_path(workdir: str | os.PathLike, process_index: int = 0) -> str:
    """The lock file of one process of a run: ``.lock`` (process 0) or ``.lock.<i>``.

    Args:
      workdir: the run's directory.
      process_index: ``jax.process_index()``.

    Returns:
      The path of the lock file.
    """
    name = LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}"
    return os.path.join(os.fspath(workdir), name)


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


class WorkdirLock:
    """An exclusive lock on a workdir for one process of a run; a context manager.

    Attributes:
      path: the lock file.
    """

    def __init__(self, workdir: str | os.PathLike, process_index: int = 0):
        self.path = lock_path(workdir, process_index)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or fails at once naming the live holder.

        Raises:
          WorkdirLockedError: another process holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            workdir = os.path.dirname(os.path.abspath(self.path))
            raise WorkdirLockedError(
                f"The workdir {workdir} is in use by another run ({holder}; lock file "
                f"{self.path}). Two runs in one workdir would interleave their checkpoints: "
                "wait for it to end, stop it, or use another --workdir."
            ) from None
        except OSError as e:  # e.g. ENOLCK: a filesystem without locks.
            os.close(fd)
            logging.warning("Cannot lock %s (%s); running without a workdir lock.", self.path, e)
            return
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if left:
            # The OS freed the lock when its holder died, but the holder never cleaned up.
            logging.warning(
                "Taking over the lock %s left by %s, which no longer runs.",
                self.path,
                _describe_holder(left),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file (so the next run sees a clean hand-over) and unlocks it."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------- config


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


def flatten_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A config as ``{dotted field: JSON value}`` (tuples as lists), as ``config.json`` holds it.

    Args:
      config: a ConfigDict, or the dict read from ``config.json``.

    Returns:
      The flat mapping, sorted by field.
    """
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{prefix}{key}.", item)
        else:
            flat[prefix[:-1]] = list(value) if isinstance(value, tuple) else value

    visit("", config)
    return dict(sorted(flat.items()))


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
      ConfigChangedError: an unsafe change without ``allow_change``; the message lists the
        changed fields with their old and new values.
    """
    new = flatten_config(config)
    bad = _non_finite_fields(new)
    if bad:
        raise ValueError(f"Config fields {bad} are NaN or infinite; give finite values.")
    saved = read_saved_config(workdir)
    if saved is None or checkpoint_step is None:
        return []
    changes = diff_configs(saved, new)
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
    tmp = f"{history_path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    os.replace(tmp, history_path)
