"""Training and evaluation of a config in a workdir: one flat loop over a jitted, sharded step.

The step (`bts_jax.steps`) is compiled once over a 1-D ``("data",)`` mesh of all devices of all
processes; the input (`bts_jax.data.InputPipeline`) is built once per run; checkpoints
(`bts_jax.checkpointing`) make every run resumable exactly. The same code runs on one CPU and on
many GPUs over many hosts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from bts_jax import checkpointing, evaluation, figures, plots, run_guard
from bts_jax import data as data_lib
from bts_jax.config_checks import validate_config
from bts_jax.models import build_model, count_params
from bts_jax.state import (
    TrainState,
    abstract_train_state,
    create_learning_rate_schedule,
    create_optimizer,
    create_train_state,
    make_global_batch,
    make_mesh,
)
from bts_jax.steps import make_eval_step, make_train_step

# ----------------------------------------------------------------------------- logging


class MetricLogger:
    """Writes per-epoch metrics to JSON lines, CSV and TensorBoard; silent on processes != 0.

    Attributes:
      workdir: the run's directory.
      history: the per-epoch rows written so far (restored on resume).
      enabled: whether this process writes files.
    """

    def __init__(self, workdir: str, history: list[dict] | None = None, *, enabled: bool = True):
        self.workdir = workdir
        self.history = list(history or [])
        self.enabled = enabled
        self._tb = None
        if self.enabled:
            import tensorflow as tf  # Only for the TensorBoard event writer.

            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, row: dict[str, float]) -> None:
        """Appends one epoch's metrics and rewrites the log files from the whole history.

        Args:
          row: metric name -> value; must contain "epoch" and "step".
        """
        self.history.append(dict(row))
        if not self.enabled:
            return
        # Rewritten whole from the history, so a resumed run never duplicates an epoch's row.
        with open(os.path.join(self.workdir, "metrics.jsonl"), "w") as f:
            f.writelines(evaluation.json_dumps(r) + "\n" for r in self.history)
        self._write_csv()
        import tensorflow as tf

        with self._tb.as_default(step=int(row["step"])):
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, int | float):
                    tf.summary.scalar(key, value)
        self._tb.flush()

    def _write_csv(self) -> None:
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "epoch", k))
        lines = [",".join(keys)]
        lines += [",".join(str(row.get(k, "")) for k in keys) for row in self.history]
        with open(os.path.join(self.workdir, "metrics.csv"), "w") as f:
            f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- set-up


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the run stopped before saving anything after it."""


@dataclasses.dataclass
class RunSetup:
    """What a run derives from its config: the model, optimiser, mesh and compiled steps.

    Attributes:
      model: the segmentation model.
      optimizer: the optax transformation.
      schedule: the learning-rate schedule (step -> rate).
      mesh: the device mesh.
      steps_per_epoch: optimiser steps per epoch, the same on every host.
      total_steps: optimiser steps of the whole run.
      train_fn: the compiled train step.
      eval_fn: the compiled eval step returning predictions (per-image metrics).
      eval_counts_fn: the compiled eval step returning only sums (per-epoch validation).
    """

    model: nn.Module
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    steps_per_epoch: int
    total_steps: int
    train_fn: Callable
    eval_fn: Callable
    eval_counts_fn: Callable


def setup_run(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> RunSetup:
    """Validates ``config`` and builds everything a run needs (no data is read beyond counting).

    Args:
      config: experiment config.
      mesh: device mesh; default all devices.

    Returns:
      A RunSetup.

    Raises:
      ValueError: naming the config field that cannot work on this mesh.
    """
    mesh = mesh or make_mesh()
    validate_config(config, device_count=mesh.devices.size, process_count=jax.process_count())
    model = build_model(config.model, dtype=config.dtype)
    steps = data_lib.steps_per_epoch(config, process_count=jax.process_count())
    total = steps * config.num_epochs
    schedule = create_learning_rate_schedule(config.optimizer, steps, total)
    optimizer = create_optimizer(config.optimizer, schedule)
    return RunSetup(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        mesh=mesh,
        steps_per_epoch=steps,
        total_steps=total,
        train_fn=make_train_step(config, model, optimizer, mesh),
        eval_fn=make_eval_step(config, model, mesh, with_predictions=True),
        eval_counts_fn=make_eval_step(config, model, mesh, with_predictions=False),
    )


def make_input_pipeline(
    config: ml_collections.ConfigDict, cache: data_lib.DataCache | None = None
) -> data_lib.InputPipeline:
    """This process's `bts_jax.data.InputPipeline` for ``config``.

    Args:
      config: experiment config.
      cache: a `bts_jax.data.DataCache` to share; a new one by default.

    Returns:
      The pipeline, with this process's index and the process count.
    """
    return data_lib.InputPipeline(
        config,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        cache=cache,
    )


# ----------------------------------------------------------------------------- the loop


def due_events(
    step: int,
    *,
    steps_per_epoch: int,
    total_steps: int,
    log_every: int,
    eval_every_epochs: int,
    checkpoint_every: int,
) -> frozenset[str]:
    """What is due after optimiser step ``step``: the run's only "is it time" rule.

    Args:
      step: optimiser steps done (1-based after the first step).
      steps_per_epoch: steps per epoch.
      total_steps: steps of the whole run.
      log_every: ``config.log_every_steps``.
      eval_every_epochs: ``config.eval_every_epochs``.
      checkpoint_every: ``config.checkpoint.every_steps`` (0 = at the end of every epoch).

    Returns:
      A subset of ``{"log", "epoch_end", "eval", "checkpoint"}``: fetch and check the pending
      step metrics; close the epoch (write its row); evaluate on the validation split; save the
      latest checkpoint. The end of an epoch always logs; the last step always evaluates and saves.
    """
    events = set()
    last = step == total_steps
    epoch_end = step % steps_per_epoch == 0
    if step % log_every == 0 or epoch_end:
        events.add("log")
    if epoch_end:
        events.add("epoch_end")
        if (step // steps_per_epoch) % eval_every_epochs == 0 or last:
            events.add("eval")
    if checkpoint_every:
        if step % checkpoint_every == 0 or last:
            events.add("checkpoint")
    elif epoch_end:
        events.add("checkpoint")
    return frozenset(events)


def _fetch_finite(
    pending: list[tuple[int, dict]], checkpoint_step: int | None
) -> list[dict[str, float]]:
    """Fetches pending step metrics and stops the run at the first non-finite loss."""
    fetched = jax.device_get(pending)
    for step, step_metrics in fetched:
        if not np.isfinite(step_metrics["loss"]):
            last = "none" if checkpoint_step is None else f"step {checkpoint_step}"
            raise NonFiniteLossError(
                f"Training loss is {step_metrics['loss']} at step {step}. The run stopped; the "
                f"last good checkpoint ({last}) is intact. Lower config.optimizer.learning_rate, "
                "set config.optimizer.grad_clip_norm, or check the input data."
            )
    return [m for _, m in fetched]


def _progress(iterable: Iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="train", leave=False, dynamic_ncols=True)


def _restore_or_init(config, run: RunSetup, latest) -> tuple[TrainState, dict[str, Any]]:
    abstract = abstract_train_state(config, run.model, run.optimizer, run.mesh)
    if jax.process_index() == 0:
        logging.info(
            "Model: %s parameters; %d devices over %d processes; %d steps per epoch.",
            f"{count_params(abstract.params):,}",
            run.mesh.devices.size,
            jax.process_count(),
            run.steps_per_epoch,
        )
    state, meta = checkpointing.restore_checkpoint(latest, abstract)
    if state is None:
        return create_train_state(config, run.model, run.optimizer, run.mesh), {
            "history": [],
            "best_miou": None,
        }
    logging.info("Resumed from step %d.", int(state.step))
    return state, meta


def _log_schedule_change(
    config: ml_collections.ConfigDict,
    run: RunSetup,
    checkpoint_step: int | None,
    changes: list[run_guard.ConfigChange],
) -> None:
    # A raised num_epochs rebuilds the schedule for the new total: say what that does to the rate.
    for change in changes:
        if change.field == "num_epochs" and checkpoint_step is not None:
            old_total = run.steps_per_epoch * int(change.old)
            old = create_learning_rate_schedule(config.optimizer, run.steps_per_epoch, old_total)
            logging.warning(
                "num_epochs %s -> %s: the learning-rate schedule is rebuilt for %d steps; at the "
                "resume step %d the rate goes from %.4g (old schedule) to %.4g.",
                change.old,
                change.new,
                run.total_steps,
                checkpoint_step,
                float(old(checkpoint_step)),
                float(run.schedule(checkpoint_step)),
            )


def _epoch_row(
    step: int, run: RunSetup, batch_size: int, epoch_metrics: list[dict], elapsed: float
) -> dict[str, float]:
    return {
        "epoch": step // run.steps_per_epoch,
        "step": step,
        # After a mid-epoch resume, the mean of the steps run since the resume.
        "train_loss": float(np.mean([m["loss"] for m in epoch_metrics])),
        "learning_rate": float(run.schedule(step)),
        "train_images_per_s": len(epoch_metrics) * batch_size / elapsed,
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    pipeline: data_lib.InputPipeline | None = None,
    writer: MetricLogger | None = None,
    show_progress: bool = True,
    allow_config_change: bool = False,
) -> dict[str, float]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint, then evaluates.

    Before anything is built or compiled, the workdir is checked (`bts_jax.run_guard`): it must be
    writable, no other live run may hold its lock, and a workdir with checkpoints must have been
    trained with the same config, apart from `bts_jax.run_guard.SAFE_CHANGES`.

    Writes to ``workdir``: ``config.json``, ``config_history.jsonl`` (every config the run has
    used, with the step it took effect), ``data_split.json``, ``checkpoints/`` (latest N) and
    ``best/`` (best validation mIoU), ``metrics.jsonl``, ``metrics.csv``, ``tensorboard/``,
    ``loss.png`` and ``miou.png``; at the end, for the best checkpoint, ``eval_<split>.json`` and
    ``per_image_<split>.csv`` of the validation split (and of the test split when the config has
    one), and ``predictions/`` (contours of truth and prediction on validation images). Only
    process 0 writes files; every process takes part in checkpointing.

    Args:
      config: experiment config.
      workdir: output directory (created if needed).
      mesh: device mesh; default all devices of all processes.
      pipeline: the run's input; default `make_input_pipeline` (tests pass their own).
      writer: the metric logger; default a `MetricLogger` in ``workdir``.
      show_progress: draw a progress bar on process 0 (a sweep running cells side by side
        draws its own).
      allow_config_change: resume a workdir whose config differs in fields outside
        `bts_jax.run_guard.SAFE_CHANGES` (``train.py --allow_config_change``).

    Returns:
      The full validation metrics of the best checkpoint.

    Raises:
      NonFiniteLossError: when the loss becomes NaN or Inf.
      ValueError: for an invalid config, naming the setting.
      bts_jax.run_guard.WorkdirNotWritableError: the workdir cannot be written (path, reason).
      bts_jax.run_guard.WorkdirLockedError: another run uses the workdir (names its process).
      bts_jax.run_guard.ConfigChangedError: the config differs from the checkpoints' (a diff).
    """
    workdir = run_guard.prepare_workdir(workdir)
    with run_guard.WorkdirLock(workdir, jax.process_index()):
        checkpoint_step = checkpointing.latest_saved_step(workdir)
        changes = run_guard.check_config(
            config, workdir, checkpoint_step, allow_change=allow_config_change
        )
        return _train_and_evaluate(
            config,
            workdir,
            mesh=mesh,
            pipeline=pipeline,
            writer=writer,
            show_progress=show_progress,
            checkpoint_step=checkpoint_step,
            changes=changes,
        )


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: Mesh | None,
    pipeline: data_lib.InputPipeline | None,
    writer: MetricLogger | None,
    show_progress: bool,
    checkpoint_step: int | None,
    changes: list[run_guard.ConfigChange],
) -> dict[str, float]:
    """`train_and_evaluate` in a checked, locked workdir (the guards' findings passed on)."""
    run = setup_run(config, mesh)
    is_main = jax.process_index() == 0
    pipeline = pipeline or make_input_pipeline(config)
    if is_main:
        _log_schedule_change(config, run, checkpoint_step, changes)
        run_guard.record_config(config, workdir, checkpoint_step, changes)
        checkpointing.save_config(config, workdir)
        data_lib.write_split_file(config, workdir)

    latest, best = checkpointing.checkpoint_managers(workdir, config)
    state, meta = _restore_or_init(config, run, latest)
    writer = writer or MetricLogger(workdir, enabled=is_main)
    writer.history = list(meta["history"])
    best_miou = -math.inf if meta["best_miou"] is None else meta["best_miou"]

    step = int(state.step)
    checkpoint_step = latest.latest_step()
    pending: list[tuple[int, dict]] = []
    epoch_metrics: list[dict] = []
    epoch_start = time.perf_counter()
    batches = _progress(
        pipeline.train_batches(start_step=step),
        run.total_steps - step,
        enabled=is_main and show_progress,
    )
    try:
        for local in batches:
            state, step_metrics = run.train_fn(state, make_global_batch(local, run.mesh))
            step += 1
            pending.append((step, step_metrics))
            events = due_events(
                step,
                steps_per_epoch=run.steps_per_epoch,
                total_steps=run.total_steps,
                log_every=int(config.log_every_steps),
                eval_every_epochs=int(config.eval_every_epochs),
                checkpoint_every=int(config.checkpoint.every_steps),
            )
            if "log" in events or "checkpoint" in events:
                epoch_metrics += _fetch_finite(pending, checkpoint_step)
                pending = []
                if hasattr(batches, "set_postfix"):
                    rate = (
                        len(epoch_metrics) * config.batch_size / (time.perf_counter() - epoch_start)
                    )
                    batches.set_postfix(
                        epoch=step // run.steps_per_epoch + (0 if "epoch_end" in events else 1),
                        loss=f"{epoch_metrics[-1]['loss']:.4f}",
                        img_s=f"{rate:.1f}",
                    )
            improved = False
            if "epoch_end" in events:
                row = _epoch_row(
                    step, run, config.batch_size, epoch_metrics, time.perf_counter() - epoch_start
                )
                if "eval" in events:
                    val = evaluation.evaluate(
                        run.eval_counts_fn,
                        state,
                        pipeline.eval_batches("validation"),
                        run.mesh,
                        num_classes=run.model.num_classes,
                        per_image=False,
                    ).metrics
                    row.update(val_loss=val["loss"], val_miou=val["miou"], val_dice=val["dice"])
                    improved = row["val_miou"] > best_miou
                    best_miou = max(best_miou, row["val_miou"])
                writer.write(row)
                if is_main:
                    logging.info(
                        "epoch %d: %s",
                        row["epoch"],
                        ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
                    )
                epoch_metrics, epoch_start = [], time.perf_counter()
            if improved or "checkpoint" in events:
                saved_meta = {
                    "history": writer.history,
                    "best_miou": None if best_miou == -math.inf else best_miou,
                }
            if improved:
                checkpointing.save_checkpoint(
                    best, step, state, saved_meta, {"val_miou": best_miou}
                )
            if "checkpoint" in events:
                # A latest save whose meta names a best mIoU must never outlive the best save it
                # names: a kill between the two would leave best/ without the selected model.
                best.wait_until_finished()
                checkpointing.save_checkpoint(latest, step, state, saved_meta)
                checkpoint_step = step
    finally:
        latest.wait_until_finished()
        best.wait_until_finished()
    if step < run.total_steps:
        epoch = step // run.steps_per_epoch
        raise RuntimeError(
            f"The training input of epoch {epoch + 1} ended after step {step}, before its "
            f"{run.steps_per_epoch} steps: did the dataset change during the run?"
        )
    latest.close()
    best.close()
    if is_main:
        plots.plot_training_curves(writer.history, workdir)
    return _final_evaluation(config, workdir, run, pipeline, state)


def _final_evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    run: RunSetup,
    pipeline: data_lib.InputPipeline,
    state: TrainState,
) -> dict[str, float]:
    """Scores the best checkpoint on validation (and test), and draws validation predictions."""
    abstract = abstract_train_state(config, run.model, run.optimizer, run.mesh)
    selected = checkpointing.restore_train_state(workdir, abstract, "best")
    del state  # The selected checkpoint, not the last state, is what gets reported.
    drawn = pipeline.examples("validation")[: int(config.num_predictions)]
    result = None
    for split in _final_splits(pipeline):
        found = evaluation.evaluate(
            run.eval_fn,
            selected,
            pipeline.eval_batches(split),
            run.mesh,
            num_classes=run.model.num_classes,
            keep_ids=[e.id for e in drawn] if split == "validation" else (),
        )
        found.metrics["step"] = int(selected.step)
        if jax.process_index() == 0:
            labels = {e.id: e.label for e in pipeline.examples(split)}
            evaluation.write_evaluation(found, workdir, split, labels)
            if split == "validation":
                figures.save_prediction_overlays(
                    os.path.join(workdir, "predictions"), drawn, found.predictions, config.data
                )
        if split == "validation":
            result = found.metrics
    return result


def _final_splits(pipeline: data_lib.InputPipeline) -> list[str]:
    # The test split is reported; a config without one (test_fraction=0) has only validation.
    return ["validation", "test"] if pipeline.examples("test") else ["validation"]


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "validation",
    *,
    which: str = "best",
    run: RunSetup | None = None,
    pipeline: data_lib.InputPipeline | None = None,
) -> dict[str, float]:
    """Evaluates a workdir's best (or latest) checkpoint on a split with every metric.

    Prints nothing; writes ``workdir/eval_<split>.json`` and ``workdir/per_image_<split>.csv`` on
    process 0.

    Args:
      config: the run's config.
      workdir: the run's directory.
      split: the split to evaluate ("validation", "test" or "train").
      which: "best" or "latest" (see `bts_jax.checkpointing.resolve_checkpoint`).
      run: an existing RunSetup to reuse compiled steps; built from ``config`` when None.
      pipeline: an existing input pipeline; built from ``config`` when None.

    Returns:
      The metrics dict (with the checkpoint's ``step``).
    """
    run = run or setup_run(config)
    pipeline = pipeline or make_input_pipeline(config)
    abstract = abstract_train_state(config, run.model, run.optimizer, run.mesh)
    restored = checkpointing.restore_train_state(workdir, abstract, which)
    found = evaluation.evaluate(
        run.eval_fn,
        restored,
        pipeline.eval_batches(split),
        run.mesh,
        num_classes=run.model.num_classes,
    )
    found.metrics["step"] = int(restored.step)
    if jax.process_index() == 0:
        labels = {e.id: e.label for e in pipeline.examples(split)}
        evaluation.write_evaluation(found, workdir, split, labels)
    return found.metrics


def run_summary(workdir: str, result: dict[str, float]) -> str:
    """The few lines a user reads at the end of a run: results, where things are, what next.

    Args:
      workdir: the finished run's directory.
      result: the validation metrics `train_and_evaluate` returned.

    Returns:
      The text (no trailing newline).
    """
    workdir = os.path.abspath(workdir)

    def line(name: str, metrics: dict[str, Any]) -> str:
        shown = ", ".join(
            f"{key} {metrics[key]:.4f}"
            for key in ("miou", "dice", "dice_per_image", "hd95_mm", "loss")
            if isinstance(metrics.get(key), float | int)
        )
        return f"{name} (best checkpoint, step {int(metrics['step'])}): {shown}"

    lines = [line("Validation", {k: v for k, v in result.items()})]
    test_path = os.path.join(workdir, "eval_test.json")
    if os.path.isfile(test_path):
        with open(test_path) as f:
            lines.append(line("Test", json.load(f)))
    empty = result.get("num_pred_empty_only")
    if empty:
        lines.append(
            f"  {int(empty)} of {int(result['num_images'])} validation slices with a "
            "tumour got an empty prediction (framed in magenta in predictions/)."
        )
    lines += [
        f"Outputs in {workdir}:",
        "  predictions/            validation slices: truth (green) and prediction (red) contours",
        "  eval_*.json, per_image_*.csv, metrics.csv, loss.png, miou.png, checkpoints/, best/",
        "Next:",
        f"  python predict.py --workdir {workdir} --inputs YOUR_IMAGES/ --output_dir masks/",
        f"  python evaluate.py --workdir {workdir} --split validation",
        f"  tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
    ]
    return "\n".join(lines)
