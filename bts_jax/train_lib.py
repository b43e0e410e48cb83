"""Training and evaluation of a config in a workdir: one flat loop over a jitted, sharded step.

The step (`bts_jax.steps`) is compiled once over a 1-D ``("data",)`` mesh of all devices of all
processes; the input (`bts_jax.data.InputPipeline`) is built once per run; checkpoints
(`bts_jax.checkpointing`) make every run resumable exactly. The same code runs on one CPU and on
many GPUs over many hosts.

``config.num_seeds = K > 1`` trains seeds ``config.seed + k`` (k < K) in the same loop and one
program: one input pipeline per seed, their batches stacked (K, B, ...), the step vmapped over the
seeds on a ``("seed", "data")`` mesh (`bts_jax.state.make_seed_mesh`). Everything else is done
per seed, on the seed's own state, exactly as its single run does it: evaluation, checkpoints,
metrics and the final evaluation, in the seed's own workdir (`bts_jax.checkpointing.seed_workdir`).
Seed k ends with the parameters of a single run of seed ``config.seed + k`` up to float rounding.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
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
    SEED_AXIS,
    TrainState,
    abstract_train_state,
    create_learning_rate_schedule,
    create_optimizer,
    create_seed_train_states,
    create_train_state,
    flat_mesh,
    make_global_batch,
    make_mesh,
    make_seed_batch,
    make_seed_mesh,
    stack_train_states,
    unstack_train_state,
)
from bts_jax.steps import make_eval_step, make_seeds_train_step, make_train_step

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
      mesh: the device mesh of the train step: ``("data",)``, or ``("seed", "data")`` for
        ``config.num_seeds > 1``.
      steps_per_epoch: optimiser steps per epoch, the same on every host.
      total_steps: optimiser steps of the whole run.
      train_fn: the compiled train step (vmapped over the seeds for ``num_seeds > 1``).
      eval_fn: the compiled eval step returning predictions (per-image metrics).
      eval_counts_fn: the compiled eval step returning only sums (per-epoch validation).
      num_seeds: seeds trained together (``config.num_seeds``).
      eval_mesh: the 1-D ``("data",)`` mesh of the same devices, on which one seed's state is
        evaluated, saved and restored; ``mesh`` itself for one seed.
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
    num_seeds: int = 1
    eval_mesh: Mesh | None = None

    def __post_init__(self):
        if self.eval_mesh is None:
            self.eval_mesh = self.mesh


def num_seeds_of(config: ml_collections.ConfigDict) -> int:
    """``config.num_seeds`` (1 for a config written before the field existed).

    Args:
      config: experiment config.

    Returns:
      The number of seeds trained together.
    """
    return int(config.get("num_seeds", 1))


def seed_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The configs of the single runs that a ``config.num_seeds = K`` run trains together.

    Args:
      config: experiment config.

    Returns:
      K configs, equal to ``config`` except ``seed = config.seed + k`` and ``num_seeds = 1``;
      ``[config]`` itself when K is 1.
    """
    num_seeds = num_seeds_of(config)
    if num_seeds == 1:
        return [config]
    configs = []
    for k in range(num_seeds):
        single = copy.deepcopy(config)
        single.seed = int(config.seed) + k
        single.num_seeds = 1
        configs.append(single)
    return configs


def setup_run(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> RunSetup:
    """Validates ``config`` and builds everything a run needs (no data is read beyond counting).

    With ``config.num_seeds = K > 1`` the train step is compiled vmapped over K seeds on a
    ``("seed", "data")`` mesh of the same devices (`bts_jax.state.make_seed_mesh`), and the eval
    steps for one seed's state on the 1-D mesh of those devices.

    Args:
      config: experiment config.
      mesh: device mesh (its devices are used; a 1-D one is reshaped into the seed mesh for
        ``num_seeds > 1``); default all devices.

    Returns:
      A RunSetup.

    Raises:
      ValueError: naming the config field that cannot work on this mesh.
    """
    num_seeds = num_seeds_of(config)
    mesh = mesh or make_mesh()
    if num_seeds > 1 and SEED_AXIS not in mesh.axis_names:
        mesh = make_seed_mesh(num_seeds, mesh.devices.flat)
    validate_config(config, device_count=mesh.devices.size, process_count=jax.process_count())
    model = build_model(config.model, dtype=config.dtype)
    steps = _steps_per_epoch(config)
    total = steps * config.num_epochs
    schedule = create_learning_rate_schedule(config.optimizer, steps, total)
    optimizer = create_optimizer(config.optimizer, schedule)
    eval_mesh = mesh if num_seeds == 1 else flat_mesh(mesh)
    make_train = make_train_step if num_seeds == 1 else make_seeds_train_step
    return RunSetup(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        mesh=mesh,
        steps_per_epoch=steps,
        total_steps=total,
        train_fn=make_train(config, model, optimizer, mesh),
        eval_fn=make_eval_step(config, model, eval_mesh, with_predictions=True),
        eval_counts_fn=make_eval_step(config, model, eval_mesh, with_predictions=False),
        num_seeds=num_seeds,
        eval_mesh=eval_mesh,
    )


def _steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    # Seeds trained together take their steps together: their (seed-drawn) splits must agree.
    steps = {
        data_lib.steps_per_epoch(single, process_count=jax.process_count())
        for single in seed_configs(config)
    }
    if len(steps) > 1:
        raise ValueError(
            f"config.num_seeds={num_seeds_of(config)}: the seeds' training splits give different "
            f"numbers of steps per epoch ({sorted(steps)}); train them as separate runs."
        )
    return steps.pop()


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
    pending: list[tuple[int, dict]], checkpoint_step: int | None, seeds: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Fetches pending step metrics and stops the run at the first non-finite loss.

    With several ``seeds`` each metric is an array with one value per seed; a non-finite loss of
    any seed stops them all (they share one program), and the message names it.
    """
    fetched = jax.device_get(pending)
    for step, step_metrics in fetched:
        loss = np.asarray(step_metrics["loss"])
        if not np.all(np.isfinite(loss)):
            last = "none" if checkpoint_step is None else f"step {checkpoint_step}"
            which = ""
            if loss.ndim:
                bad = [seeds[k] for k in np.flatnonzero(~np.isfinite(loss))]
                which = f" of seed(s) {bad}"
            raise NonFiniteLossError(
                f"Training loss{which} is {step_metrics['loss']} at step {step}. The run stopped; "
                f"the last good checkpoint ({last}) is intact. Lower "
                "config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or check "
                "the input data."
            )
    return [m for _, m in fetched]


def _split_seeds(fetched: list[dict[str, Any]], num_seeds: int) -> list[list[dict[str, Any]]]:
    """Per seed, its step metrics (the fetched values hold one entry per seed when K > 1)."""
    if num_seeds == 1:
        return [fetched]
    return [
        [{key: value[k] for key, value in m.items()} for m in fetched] for k in range(num_seeds)
    ]


def _progress(iterable: Iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="train", leave=False, dynamic_ncols=True)


def _restore_or_init(config, run: RunSetup, latest) -> tuple[TrainState, dict[str, Any]]:
    abstract = abstract_train_state(config, run.model, run.optimizer, run.mesh)
    _log_model(run, abstract)
    state, meta = checkpointing.restore_checkpoint(latest, abstract)
    if state is None:
        return create_train_state(config, run.model, run.optimizer, run.mesh), _empty_meta()
    logging.info("Resumed from step %d.", int(state.step))
    return state, meta


def _empty_meta() -> dict[str, Any]:
    return {"history": [], "best_miou": None}


def _log_model(run: RunSetup, abstract: TrainState) -> None:
    if jax.process_index() == 0:
        logging.info(
            "Model: %s parameters; %d devices over %d processes; %d steps per epoch.",
            f"{count_params(abstract.params):,}",
            run.mesh.devices.size,
            jax.process_count(),
            run.steps_per_epoch,
        )


def _restore_or_init_seeds(
    config: ml_collections.ConfigDict,
    run: RunSetup,
    seeds: Sequence[_SeedRun],
    resume_step: int | None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """The stacked state of every seed, restored from ``resume_step`` or initialised."""
    abstract = abstract_train_state(config, run.model, run.optimizer, run.eval_mesh)
    _log_model(run, abstract)
    logging.info(
        "%d seeds in one program (seeds %s) on a %s mesh.",
        run.num_seeds,
        [seed.config.seed for seed in seeds],
        dict(run.mesh.shape),
    )
    if resume_step is None:
        state = create_seed_train_states(config, run.model, run.optimizer, run.mesh)
        return state, [_empty_meta() for _ in seeds]
    states, metas = [], []
    for seed in seeds:
        if resume_step not in seed.latest.all_steps():
            raise RuntimeError(
                f"{seed.workdir} has no save of step {resume_step}, the latest step every seed "
                f"has reached (its saves: {sorted(seed.latest.all_steps())}), so the seeds cannot "
                "resume together; train them in a new workdir."
            )
        state, meta = checkpointing.restore_checkpoint(seed.latest, abstract, resume_step)
        states.append(state)
        metas.append(meta)
    logging.info("Resumed %d seeds from step %d.", run.num_seeds, resume_step)
    return stack_train_states(states, run.mesh), metas


def _common_step(workdirs: Sequence[str], steps: Sequence[int | None]) -> int | None:
    """The step every seed resumes from: the earliest of their latest saves (None: a new run)."""
    if all(step is None for step in steps):
        return None
    if any(step is None for step in steps):
        listed = ", ".join(f"{d}: {s}" for d, s in zip(workdirs, steps, strict=True))
        raise RuntimeError(
            "Some seeds of this config.num_seeds run have checkpoints and others have none "
            f"(latest steps {listed}): seeds train together only from the same step. Use a new "
            "workdir, or keep config.num_seeds and config.seed of the run that wrote it."
        )
    # A run killed between its seeds' saves of one step leaves some seeds one save ahead.
    return min(steps)


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


@dataclasses.dataclass
class _SeedRun:
    """One seed's own run: its config, workdir, input, logger, checkpoints and best mIoU so far.

    A run of one seed has one; a ``config.num_seeds = K`` run has K, which share the train step.
    """

    config: ml_collections.ConfigDict
    workdir: str
    pipeline: data_lib.InputPipeline
    writer: MetricLogger | None = None
    latest: Any = None
    best: Any = None
    best_miou: float = -math.inf
    epoch_metrics: list[dict] = dataclasses.field(default_factory=list)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    pipeline: data_lib.InputPipeline | Sequence[data_lib.InputPipeline] | None = None,
    writer: MetricLogger | None = None,
    show_progress: bool = True,
    allow_config_change: bool = False,
) -> dict[str, float] | list[dict[str, float]]:
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

    With ``config.num_seeds = K > 1`` (one host), seeds ``config.seed + k`` train together in one
    program and each writes all of the above in its own ``workdir/seed_<seed>/``, as a single run
    of that seed (``num_seeds = 1``) would: each is guarded, locked, resumed, evaluated and read
    (evaluate.py, compare.py, report.py) on its own. A resumed K-seed run continues every seed
    from the latest step all of them have saved.

    Args:
      config: experiment config.
      workdir: output directory (created if needed).
      mesh: device mesh; default all devices of all processes.
      pipeline: the run's input; default `make_input_pipeline` (tests pass their own); one per
        seed, in seed order, when ``config.num_seeds > 1``.
      writer: the metric logger; default a `MetricLogger` in ``workdir`` (one seed only).
      show_progress: draw a progress bar on process 0 (a sweep running cells side by side
        draws its own).
      allow_config_change: resume a workdir whose config differs in fields outside
        `bts_jax.run_guard.SAFE_CHANGES` (``train.py --allow_config_change``).

    Returns:
      The full validation metrics of the best checkpoint; for ``num_seeds > 1`` a list of them,
      one per seed in seed order.

    Raises:
      NonFiniteLossError: when the loss becomes NaN or Inf.
      ValueError: for an invalid config, naming the setting.
      bts_jax.run_guard.WorkdirNotWritableError: the workdir cannot be written (path, reason).
      bts_jax.run_guard.WorkdirLockedError: another run uses the workdir (names its process).
      bts_jax.run_guard.ConfigChangedError: the config differs from the checkpoints' (a diff).
    """
    workdir = run_guard.prepare_workdir(workdir)
    configs = seed_configs(config)
    if len(configs) == 1:
        workdirs = [workdir]
    else:
        workdirs = [
            run_guard.prepare_workdir(checkpointing.seed_workdir(workdir, single.seed))
            for single in configs
        ]
        if writer is not None:
            raise ValueError("train_and_evaluate: writer is for one seed; each seed logs itself.")
    with contextlib.ExitStack() as locks:
        for locked in dict.fromkeys([workdir, *workdirs]):
            locks.enter_context(run_guard.WorkdirLock(locked, jax.process_index()))
        checkpoint_steps = [checkpointing.latest_saved_step(d) for d in workdirs]
        changes = [
            run_guard.check_config(single, d, step, allow_change=allow_config_change)
            for single, d, step in zip(configs, workdirs, checkpoint_steps, strict=True)
        ]
        results = _train_and_evaluate(
            config,
            configs,
            workdirs,
            mesh=mesh,
            pipelines=_seed_pipelines(configs, pipeline),
            writer=writer,
            show_progress=show_progress,
            resume_step=_common_step(workdirs, checkpoint_steps),
            changes=changes,
        )
    return results[0] if len(configs) == 1 else results


def _seed_pipelines(configs, pipeline) -> list[data_lib.InputPipeline]:
    """One input pipeline per seed: the given ones, or new ones sharing one data cache."""
    if pipeline is None:
        cache = data_lib.DataCache()
        return [make_input_pipeline(single, cache) for single in configs]
    pipelines = [pipeline] if isinstance(pipeline, data_lib.InputPipeline) else list(pipeline)
    if len(pipelines) != len(configs):
        raise ValueError(
            f"train_and_evaluate: {len(pipelines)} input pipeline(s) for {len(configs)} seed(s)."
        )
    return pipelines


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    *,
    mesh: Mesh | None,
    pipelines: Sequence[data_lib.InputPipeline],
    writer: MetricLogger | None,
    show_progress: bool,
    resume_step: int | None,
    changes: Sequence[list[run_guard.ConfigChange]],
) -> list[dict[str, float]]:
    """`train_and_evaluate` in checked, locked workdirs (the guards' findings passed on).

    One flat loop for one seed or K: ``seeds`` holds each seed's own run; only the state (stacked
    over the seeds when K > 1), the batches and the step are shared.
    """
    run = setup_run(config, mesh)
    is_main = jax.process_index() == 0
    seeds = [
        _SeedRun(single, d, p) for single, d, p in zip(configs, workdirs, pipelines, strict=True)
    ]
    if is_main:
        _log_schedule_change(config, run, resume_step, changes[0])
        for seed, seed_changes in zip(seeds, changes, strict=True):
            run_guard.record_config(seed.config, seed.workdir, resume_step, seed_changes)
            checkpointing.save_config(seed.config, seed.workdir)
            data_lib.write_split_file(seed.config, seed.workdir)

    for seed in seeds:
        seed.latest, seed.best = checkpointing.checkpoint_managers(seed.workdir, seed.config)
    if run.num_seeds == 1:
        state, meta = _restore_or_init(config, run, seeds[0].latest)
        metas = [meta]
        seeds[0].writer = writer or MetricLogger(seeds[0].workdir, enabled=is_main)
        step = int(state.step)
        checkpoint_step = seeds[0].latest.latest_step()
        batches = seeds[0].pipeline.train_batches(start_step=step)
    else:
        state, metas = _restore_or_init_seeds(config, run, seeds, resume_step)
        for seed in seeds:
            seed.writer = MetricLogger(seed.workdir, enabled=is_main)
        checkpoint_step, step = resume_step, resume_step or 0
        # The seeds' inputs advance in step; if one ended early, the run ends there (an error).
        batches = zip(
            *(seed.pipeline.train_batches(start_step=step) for seed in seeds), strict=False
        )
    for seed, meta in zip(seeds, metas, strict=True):
        seed.writer.history = list(meta["history"])
        seed.best_miou = -math.inf if meta["best_miou"] is None else meta["best_miou"]

    pending: list[tuple[int, dict]] = []
    epoch_start = time.perf_counter()
    batches = _progress(batches, run.total_steps - step, enabled=is_main and show_progress)
    try:
        for local in batches:
            if run.num_seeds == 1:
                global_batch = make_global_batch(local, run.mesh)
            else:
                global_batch = make_seed_batch(local, run.mesh)
            state, step_metrics = run.train_fn(state, global_batch)
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
                fetched = _fetch_finite(pending, checkpoint_step, [s.config.seed for s in seeds])
                for seed, seed_metrics in zip(
                    seeds, _split_seeds(fetched, run.num_seeds), strict=True
                ):
                    seed.epoch_metrics += seed_metrics
                pending = []
                if hasattr(batches, "set_postfix"):
                    done = len(seeds[0].epoch_metrics) * config.batch_size * run.num_seeds
                    batches.set_postfix(
                        epoch=step // run.steps_per_epoch + (0 if "epoch_end" in events else 1),
                        loss=f"{seeds[0].epoch_metrics[-1]['loss']:.4f}",
                        img_s=f"{done / (time.perf_counter() - epoch_start):.1f}",
                    )
            if not events & {"epoch_end", "checkpoint"}:
                continue
            # Each seed's own state, replicated like a single run's: what is evaluated and saved.
            seed_states = (
                [state] if run.num_seeds == 1 else unstack_train_state(state, run.eval_mesh)
            )
            improved = [False] * len(seeds)
            if "epoch_end" in events:
                elapsed = time.perf_counter() - epoch_start
                for k, (seed, seed_state) in enumerate(zip(seeds, seed_states, strict=True)):
                    improved[k] = _close_epoch(
                        seed, seed_state, run, step, elapsed, evaluate="eval" in events
                    )
                epoch_start = time.perf_counter()
            for seed, seed_state, seed_improved in zip(seeds, seed_states, improved, strict=True):
                _save(seed, seed_state, step, best=seed_improved, latest="checkpoint" in events)
            if "checkpoint" in events:
                checkpoint_step = step
    finally:
        for seed in seeds:
            seed.latest.wait_until_finished()
            seed.best.wait_until_finished()
    if step < run.total_steps:
        epoch = step // run.steps_per_epoch
        raise RuntimeError(
            f"The training input of epoch {epoch + 1} ended after step {step}, before its "
            f"{run.steps_per_epoch} steps: did the dataset change during the run?"
        )
    for seed in seeds:
        seed.latest.close()
        seed.best.close()
        if is_main:
            plots.plot_training_curves(seed.writer.history, seed.workdir)
    del state  # Each seed's selected checkpoint, not the last state, is what gets reported.
    return [_final_evaluation(seed.config, seed.workdir, run, seed.pipeline) for seed in seeds]


def _close_epoch(
    seed: _SeedRun, state: TrainState, run: RunSetup, step: int, elapsed: float, *, evaluate: bool
) -> bool:
    """Writes one seed's epoch row (validating it when due); returns whether its mIoU improved."""
    row = _epoch_row(step, run, seed.config.batch_size, seed.epoch_metrics, elapsed)
    improved = False
    if evaluate:
        val = evaluation.evaluate(
            run.eval_counts_fn,
            state,
            seed.pipeline.eval_batches("validation"),
            run.eval_mesh,
            num_classes=run.model.num_classes,
            per_image=False,
        ).metrics
        row.update(val_loss=val["loss"], val_miou=val["miou"], val_dice=val["dice"])
        improved = row["val_miou"] > seed.best_miou
        seed.best_miou = max(seed.best_miou, row["val_miou"])
    seed.writer.write(row)
    if jax.process_index() == 0:
        logging.info(
            "%sepoch %d: %s",
            f"seed {seed.config.seed} " if run.num_seeds > 1 else "",
            row["epoch"],
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
        )
    seed.epoch_metrics = []
    return improved


def _save(seed: _SeedRun, state: TrainState, step: int, *, best: bool, latest: bool) -> None:
    """Saves one seed's state as its best and/or latest checkpoint of ``step``."""
    if not (best or latest):
        return
    saved_meta = {
        "history": seed.writer.history,
        "best_miou": None if seed.best_miou == -math.inf else seed.best_miou,
    }
    if best:
        checkpointing.save_checkpoint(
            seed.best, step, state, saved_meta, {"val_miou": seed.best_miou}
        )
    if latest:
        # A latest save whose meta names a best mIoU must never outlive the best save it names:
        # a kill between the two would leave best/ without the selected model.
        seed.best.wait_until_finished()
        checkpointing.save_checkpoint(seed.latest, step, state, saved_meta)


def _final_evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    run: RunSetup,
    pipeline: data_lib.InputPipeline,
) -> dict[str, float]:
    """Scores the best checkpoint on validation (and test), and draws validation predictions."""
    abstract = abstract_train_state(config, run.model, run.optimizer, run.eval_mesh)
    selected = checkpointing.restore_train_state(workdir, abstract, "best")
    drawn = pipeline.examples("validation")[: int(config.num_predictions)]
    result = None
    for split in _final_splits(pipeline):
        found = evaluation.evaluate(
            run.eval_fn,
            selected,
            pipeline.eval_batches(split),
            run.eval_mesh,
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
    abstract = abstract_train_state(config, run.model, run.optimizer, run.eval_mesh)
    restored = checkpointing.restore_train_state(workdir, abstract, which)
    found = evaluation.evaluate(
        run.eval_fn,
        restored,
        pipeline.eval_batches(split),
        run.eval_mesh,
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
