"""A workdir's Orbax checkpoints, and the one rule for which one to use.

``checkpoints/`` holds the latest ``config.checkpoint.max_to_keep`` saves (0: every one), ``best/``
the one save with the highest validation mIoU. Each save holds the whole train state (``state``) and
a small JSON (``meta``: the metric history, the best mIoU and the seconds trained so far, NaN
written as ``null``), so a run resumes exactly. Orbax writes a save into
``<step>.orbax-checkpoint-tmp-*`` and renames it when complete; such folders, left by a killed run,
are never restored (Orbax skips them by name) and are deleted when the next run opens the workdir.
Inference restores only ``params``, ``batch_stats``, ``step`` and (for a run with
``config.ema_decay > 0``) ``ema`` of a save, on the default device, whatever the device layout of
training was, and uses the weights `bts_jax.workdir.evaluated_variables` chooses.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bts_jax import jsonio
from bts_jax.models import build_model
from bts_jax.workdir.configs import load_config
from bts_jax.workdir.layout import BEST_DIR, CONFIG_FILE, LATEST_DIR
from bts_jax.workdir.weights import describe_weights, ema_enabled, evaluated_variables

CHECKPOINT_CHOICES = ("best", "latest")
# A kept save by its step: "step:1536" (one of `saved_steps`).
STEP_PREFIX = "step:"


def checkpoint_managers(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict
) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """Returns the two Orbax managers of a workdir: the latest N steps, and the best by mIoU.

    Args:
      workdir: the run's directory.
      config: experiment config (``checkpoint.max_to_keep``).

    Returns:
      ``(latest, best)`` Orbax CheckpointManagers; close them when done.
    """
    root = os.path.abspath(os.fspath(workdir))
    if jax.process_index() == 0:
        for name in (LATEST_DIR, BEST_DIR):
            remove_unfinished_saves(os.path.join(root, name))
    latest = ocp.CheckpointManager(
        os.path.join(root, LATEST_DIR),
        options=ocp.CheckpointManagerOptions(
            # 0 keeps every save (Orbax's None), to score the run at each of them later.
            max_to_keep=int(config.checkpoint.max_to_keep) or None,
            create=True,
        ),
    )
    best = ocp.CheckpointManager(
        os.path.join(root, BEST_DIR),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["val_miou"], best_mode="max", create=True
        ),
    )
    return latest, best


def remove_unfinished_saves(directory: str | os.PathLike) -> list[str]:
    """Deletes the temporary folders of saves a killed run left half written.

    Orbax's own clean-up (``cleanup_tmp_directories``) runs in the background and is only awaited
    by the next save, so a run that opens a workdir and never saves would leave them; this runs
    before the managers open. The workdir lock guarantees no other run is writing them.

    Args:
      directory: a checkpoint folder (``checkpoints/`` or ``best/``); missing is fine.

    Returns:
      The removed paths.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        if ".orbax-checkpoint-tmp" in name:
            path = os.path.join(directory, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    meta: dict[str, Any],
    step_metrics: dict[str, float] | None = None,
) -> None:
    """Saves (asynchronously) the train state and its JSON metadata at ``step``.

    Orbax saves nothing for a step at or before the manager's latest one: a run resumed from an
    earlier save recomputes the very same state, and its best save may have been completed before
    a kill.

    Args:
      manager: one of `checkpoint_managers`.
      step: the step number of the save.
      state: the train state.
      meta: JSON-serialisable run metadata (history, best mIoU).
      step_metrics: metrics the manager ranks saves by (``val_miou`` for the best manager).
    """
    # Orbax's JSON writer would write NaN, which strict JSON parsers reject.
    meta = jsonio.strict(meta)
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=step_metrics,
    )


def restore_checkpoint(
    manager: ocp.CheckpointManager, target: Any, step: int | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """Restores (state, meta) from ``manager`` at ``step`` (default: latest) in ``target``'s layout.

    Args:
      manager: an Orbax CheckpointManager.
      target: a TrainState of arrays or ``jax.ShapeDtypeStruct`` s (see
        `bts_jax.train.state.abstract_train_state`) whose shapes, dtypes and shardings the restored
        arrays take.
      step: the step to restore; None for the latest.

    Returns:
      ``(state, meta)`` or ``(None, None)`` if the manager holds no checkpoint.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


def latest_saved_step(workdir: str | os.PathLike) -> int | None:
    """The step of a workdir's latest complete save in ``checkpoints/`` (None if it has none).

    Reads the folder only (creates, deletes and compiles nothing), so it can run before set-up.

    Args:
      workdir: the run's directory.

    Returns:
      The step, or None.
    """
    return _latest_step(os.path.join(os.path.abspath(os.fspath(workdir)), LATEST_DIR))


def _latest_step(directory: str) -> int | None:
    if not os.path.isdir(directory):
        return None
    # The folder exists and nothing is saved, so the manager creates or deletes nothing.
    with ocp.CheckpointManager(directory) as manager:
        return manager.latest_step()


def saved_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of a workdir's complete saves in ``checkpoints/``, oldest first.

    ``config.checkpoint.max_to_keep`` says how many a run keeps (0 keeps every one), so a run can
    be scored at each of its epochs afterwards (``which="step:N"``).

    Args:
      workdir: the run's directory.

    Returns:
      The steps; empty when it holds none.
    """
    directory = os.path.join(os.path.abspath(os.fspath(workdir)), LATEST_DIR)
    if not os.path.isdir(directory):
        return []
    with ocp.CheckpointManager(directory) as manager:
        return sorted(int(step) for step in manager.all_steps())


def check_which(which: str) -> str:
    """``which`` itself if it names a save ("best", "latest" or "step:N", N >= 0).

    Raises:
      ValueError: anything else, with the accepted forms.
    """
    step = which[len(STEP_PREFIX) :] if which.startswith(STEP_PREFIX) else None
    if which in CHECKPOINT_CHOICES or (step is not None and step.isdigit()):
        return which
    raise ValueError(
        f"which={which!r}; expected one of {CHECKPOINT_CHOICES} or 'step:N' (a kept save's step)."
    )


def resolve_checkpoint(workdir: str | os.PathLike, which: str = "best") -> tuple[str, int]:
    """The one rule for which save of a workdir to use.

    ``"latest"`` is the newest save in ``checkpoints/``. ``"best"`` is the save in ``best/`` (the
    highest validation mIoU); a run that never evaluated has none, and then the latest save is
    used, with a logged warning. ``"step:N"`` is the save of step N in ``checkpoints/``.

    Args:
      workdir: a directory written by ``train.py``.
      which: "best", "latest" or "step:N" (`check_which`).

    Returns:
      ``(checkpoint directory, step)``.

    Raises:
      ValueError: ``which`` names no kind of save.
      FileNotFoundError: the workdir holds no save at all, or none of step N (the kept steps named).
    """
    check_which(which)
    root = os.path.abspath(os.fspath(workdir))
    latest_dir, best_dir = os.path.join(root, LATEST_DIR), os.path.join(root, BEST_DIR)
    if which.startswith(STEP_PREFIX):
        step, kept = int(which[len(STEP_PREFIX) :]), saved_steps(workdir)
        if step not in kept:
            raise FileNotFoundError(
                f"No save of step {step} in {latest_dir} (kept steps: {kept or 'none'})."
            )
        return latest_dir, step
    if which == "best":
        step = _latest_step(best_dir)
        if step is not None:
            return best_dir, step
    step = _latest_step(latest_dir)
    if step is None:
        looked = f"{BEST_DIR}/, {LATEST_DIR}/" if which == "best" else f"{LATEST_DIR}/"
        raise FileNotFoundError(f"No checkpoint in {workdir} (looked in {looked}): train it first.")
    if which == "best":
        logging.warning("%s has no best checkpoint; using the latest (step %d).", workdir, step)
    return latest_dir, step


def restore_train_state(workdir: str | os.PathLike, target: Any, which: str = "best") -> Any:
    """Restores the whole train state of a workdir's best or latest save (see `resolve_checkpoint`).

    Args:
      workdir: a directory written by ``train.py``.
      target: the abstract state (shapes, dtypes, shardings) to restore into.
      which: "best", "latest" or "step:N".

    Returns:
      The restored TrainState.
    """
    directory, step = resolve_checkpoint(workdir, which)
    with ocp.CheckpointManager(directory) as manager:
        state, _ = restore_checkpoint(manager, target, step)
    return state


def model_variable_shapes(model: nn.Module, image_size: int) -> dict[str, Any]:
    """The shapes and dtypes of a model's variables, computing nothing.

    Args:
      model: the segmentation model.
      image_size: the input height and width it is built for.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of ``jax.ShapeDtypeStruct`` leaves (``batch_stats``
      is ``{}`` for a model without BatchNorm).
    """
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, image_size, image_size, 1), jnp.float32), train=False
        )
    )
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def load_trained_model(
    workdir: str | os.PathLike, which: str = "best"
) -> tuple[ml_collections.ConfigDict, nn.Module, dict[str, Any]]:
    """Rebuilds a workdir's model and restores its weights, without touching the training data.

    Only ``params``, ``batch_stats``, ``step`` and the weights' average ``ema`` (a run with
    ``config.ema_decay > 0``) are read (the optimiser state stays on disk), as numpy, so the
    device layout of training (8 GPUs, 2 hosts...) does not matter. The weights returned are the
    ones training evaluated (`bts_jax.workdir.evaluated_variables`): the average when there is
    one.

    Args:
      workdir: a directory written by ``train.py``.
      which: "best", "latest" or "step:N" (see `resolve_checkpoint`).

    Returns:
      ``(config, model, variables)``: the run's config, the unbound model, and the evaluated
      ``{"params": ..., "batch_stats": ...}`` on the default device, ready for
      ``model.apply(variables, x, train=False)``.

    Raises:
      FileNotFoundError: not a workdir, or no checkpoint in it.
      ValueError: the checkpoint does not fit the model of the saved config.
    """
    workdir = os.fspath(workdir)
    config = load_config(workdir)
    model = build_model(config.model, dtype=config.dtype)
    directory, step = resolve_checkpoint(workdir, which)
    variable_shapes = model_variable_shapes(model, int(config.data.image_size))
    target = {"step": jax.ShapeDtypeStruct((), jnp.int32), **variable_shapes}
    if ema_enabled(config):
        target["ema"] = variable_shapes
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
    )
    with ocp.CheckpointManager(directory) as manager:
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=target, restore_args=restore_args, partial_restore=True
                    )
                ),
            )["state"]
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"The checkpoint {directory}/{step} does not match the model of "
                f"{os.path.join(workdir, CONFIG_FILE)}: {e}"
            ) from e
    logging.info(
        "Restored %s step %d: %s.", directory, int(restored["step"]), describe_weights(config)
    )
    return config, model, jax.device_put(evaluated_variables(restored))
