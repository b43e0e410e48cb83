"""Training and evaluation of a config in a workdir: one flat loop over a jitted, sharded step.

The step (`bts_jax.train.steps`) is compiled once over the mesh of all devices of all processes;
the input (`bts_jax.data.InputPipeline`) is built once per run; checkpoints
(`bts_jax.workdir.checkpoints`) make every run resumable exactly. The same code runs on one CPU and
on many GPUs over many hosts. The loop trains a `bts_jax.train.seeds.SeedGroup`: one run, or the
``config.num_seeds`` seeds of one config in one program; the group hides the seed axis.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from bts_jax import data as data_lib
from bts_jax import workdir as workdir_lib
from bts_jax.evaluation.figures import plot_training_curves
from bts_jax.train.finish import TrainResult, final_evaluation
from bts_jax.train.monitor import fetch_finite, log_model, progress_bar, update_progress
from bts_jax.train.seeds import (
    SeedGroup,
    SeedRun,
    common_step,
    empty_meta,
    seed_configs,
    seed_workdirs,
)
from bts_jax.train.setup import (
    log_schedule_change,
    make_input_pipeline,
    record_environment,
    setup_run,
)
from bts_jax.train.state import abstract_train_state


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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    pipeline: data_lib.InputPipeline | Sequence[data_lib.InputPipeline] | None = None,
    writer: workdir_lib.MetricLogger | None = None,
    show_progress: bool = True,
    allow_config_change: bool = False,
) -> list[TrainResult]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint, then evaluates.

    Before anything is built or compiled, the workdir is checked (`bts_jax.workdir`): it must be
    writable, no other live run may hold its lock, and a workdir with checkpoints must have been
    trained with the same config, apart from `bts_jax.workdir.SAFE_CHANGES`.

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
    (evaluate.py, compare.py) on its own. A resumed K-seed run continues every seed from the
    latest step all of them have saved.

    Args:
      config: experiment config.
      workdir: output directory (created if needed).
      mesh: device mesh; default all devices of all processes.
      pipeline: the run's input; default `bts_jax.train.make_input_pipeline` (tests pass their
        own); one per seed, in seed order, when ``config.num_seeds > 1``.
      writer: the metric logger; default a `bts_jax.workdir.MetricLogger` in ``workdir`` (one
        seed only).
      show_progress: draw a progress bar on process 0 (a sweep running cells side by side
        draws its own).
      allow_config_change: resume a workdir whose config differs in fields outside
        `bts_jax.workdir.SAFE_CHANGES` (``train.py --allow_config_change``).

    Returns:
      One `TrainResult` per seed, in seed order (one for a plain run): the seed, its workdir and
      the full validation metrics of its best checkpoint.

    Raises:
      NonFiniteLossError: when the loss becomes NaN or Inf.
      ValueError: for an invalid config, naming the setting.
      bts_jax.workdir.WorkdirNotWritableError: the workdir cannot be written (path, reason).
      bts_jax.workdir.WorkdirLockedError: another run uses the workdir (names its process).
      bts_jax.workdir.ConfigChangedError: the config differs from the checkpoints' (a diff).
    """
    workdir = workdir_lib.prepare_workdir(workdir)
    configs = seed_configs(config)
    workdirs = [workdir_lib.prepare_workdir(d) for d in seed_workdirs(workdir, configs)]
    if writer is not None and len(configs) > 1:
        raise ValueError("train_and_evaluate: writer is for one seed; each seed logs itself.")
    with contextlib.ExitStack() as locks:
        for locked in dict.fromkeys([workdir, *workdirs]):
            locks.enter_context(workdir_lib.WorkdirLock(locked, jax.process_index()))
        checkpoint_steps = [workdir_lib.latest_saved_step(d) for d in workdirs]
        changes = [
            workdir_lib.check_config(single, d, step, allow_change=allow_config_change)
            for single, d, step in zip(configs, workdirs, checkpoint_steps, strict=True)
        ]
        group = SeedGroup(
            SeedRun(single, d, p)
            for single, d, p in zip(configs, workdirs, _pipelines(configs, pipeline), strict=True)
        )
        return _train(
            config,
            group,
            mesh=mesh,
            writer=writer,
            show_progress=show_progress,
            resume_step=common_step(workdirs, checkpoint_steps),
            changes=changes,
        )


def _pipelines(configs, pipeline) -> list[data_lib.InputPipeline]:
    """One input pipeline per run: the given ones, or new ones sharing one data cache."""
    if pipeline is None:
        cache = data_lib.DataCache()
        return [make_input_pipeline(single, cache) for single in configs]
    pipelines = [pipeline] if isinstance(pipeline, data_lib.InputPipeline) else list(pipeline)
    if len(pipelines) != len(configs):
        raise ValueError(
            f"train_and_evaluate: {len(pipelines)} input pipeline(s) for {len(configs)} seed(s)."
        )
    return pipelines


def _train(
    config: ml_collections.ConfigDict,
    group: SeedGroup,
    *,
    mesh: Mesh | None,
    writer: workdir_lib.MetricLogger | None,
    show_progress: bool,
    resume_step: int | None,
    changes: Sequence[list[workdir_lib.ConfigChange]],
) -> list[TrainResult]:
    """`train_and_evaluate` in checked, locked workdirs (the guards' findings passed on)."""
    run = setup_run(config, mesh)
    is_main = jax.process_index() == 0
    if is_main:
        log_schedule_change(config, run, resume_step, changes[0])
        logging.info(
            "Validation, the best checkpoint and the final evaluation use %s.",
            workdir_lib.describe_weights(config),
        )
        for member, member_changes in zip(group.runs, changes, strict=True):
            workdir_lib.record_config(member.config, member.workdir, resume_step, member_changes)
            workdir_lib.save_config(member.config, member.workdir)
            workdir_lib.write_split_file(member.config, member.workdir)
            record_environment(member, resume_step, run)
    for member in group.runs:
        member.latest, member.best = workdir_lib.checkpoint_managers(member.workdir, member.config)
        member.writer = writer or workdir_lib.MetricLogger(member.workdir, enabled=is_main)

    abstract = abstract_train_state(config, run.model, run.optimizer, run.eval_mesh)
    log_model(run, abstract, group)
    if resume_step is None:
        state = group.initial_state(config, run.model, run.optimizer, run.mesh)
        metas = [empty_meta() for _ in group.runs]
    else:
        state, metas = group.restore(abstract, resume_step, run.mesh)
        logging.info("Resumed from step %d.", resume_step)
    for member, meta in zip(group.runs, metas, strict=True):
        member.restore_history(meta)

    checkpoint_step, step = resume_step, resume_step or 0
    pending: list[tuple[int, dict]] = []
    epoch_start = time.perf_counter()
    batches = progress_bar(
        group.train_batches(step), run.total_steps - step, enabled=is_main and show_progress
    )
    try:
        for local in batches:
            state, step_metrics = run.train_fn(state, group.global_batch(local, run.mesh))
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
                group.add_step_metrics(fetch_finite(pending, checkpoint_step, group.seeds()))
                pending = []
                update_progress(batches, group, config, run, step, events, epoch_start)
            if not events & {"epoch_end", "checkpoint"}:
                continue
            for member, member_state in zip(
                group.runs, group.per_seed_states(state, run.eval_mesh), strict=True
            ):
                improved = False
                if "epoch_end" in events:
                    elapsed = time.perf_counter() - epoch_start
                    improved = member.close_epoch(
                        member_state, run, step, elapsed, evaluate="eval" in events
                    )
                member.save(member_state, step, best=improved, latest="checkpoint" in events)
            if "epoch_end" in events:
                epoch_start = time.perf_counter()
            if "checkpoint" in events:
                checkpoint_step = step
    finally:
        for member in group.runs:
            member.latest.wait_until_finished()
            member.best.wait_until_finished()
    if step < run.total_steps:
        epoch = step // run.steps_per_epoch
        raise RuntimeError(
            f"The training input of epoch {epoch + 1} ended after step {step}, before its "
            f"{run.steps_per_epoch} steps: did the dataset change during the run?"
        )
    for member in group.runs:
        member.latest.close()
        member.best.close()
        if is_main:
            plot_training_curves(member.writer.history, member.workdir)
    del state  # Each run's selected checkpoint, not the last state, is what gets reported.
    return [
        TrainResult(
            seed=int(member.config.seed),
            workdir=member.workdir,
            metrics=final_evaluation(member.config, member.workdir, run, member.pipeline),
        )
        for member in group.runs
    ]
