"""What a run derives from its config before the first step: model, optimiser, mesh, steps."""

from __future__ import annotations

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from bts_jax import data as data_lib
from bts_jax import workdir as workdir_lib
from bts_jax.models import build_model, resolve_conv_impl
from bts_jax.sharding import compiled_together, make_mesh
from bts_jax.train import seeds
from bts_jax.train.config_checks import validate_config
from bts_jax.train.optim import create_learning_rate_schedule, create_optimizer
from bts_jax.train.run_setup import RunSetup
from bts_jax.train.seeds import SeedRun, num_seeds_of, seed_configs
from bts_jax.train.state import output_bias_record
from bts_jax.train.steps import make_eval_step
from bts_jax.workdir import ConfigChange


def setup_run(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> RunSetup:
    """Validates ``config`` and builds everything a run needs (no data is read beyond counting).

    Args:
      config: experiment config.
      mesh: device mesh (its devices are used; a 1-D one becomes the ``("seed", "data")`` mesh
        of ``config.num_seeds > 1``, `bts_jax.train.seeds.train_mesh`); default all devices.

    Returns:
      A RunSetup.

    Raises:
      ValueError: naming the config field that cannot work on this mesh.
    """
    num_seeds = num_seeds_of(config)
    mesh = seeds.train_mesh(num_seeds, mesh or make_mesh())
    validate_config(config, device_count=mesh.devices.size, process_count=jax.process_count())
    model = build_model(config.model, dtype=config.dtype)
    steps = _steps_per_epoch(config)
    total = steps * config.num_epochs
    schedule = create_learning_rate_schedule(config.optimizer, steps, total)
    optimizer = create_optimizer(config.optimizer, schedule)
    eval_mesh = seeds.eval_mesh(num_seeds, mesh)
    return RunSetup(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        mesh=mesh,
        eval_mesh=eval_mesh,
        steps_per_epoch=steps,
        total_steps=total,
        # Compiled by every process before any runs them (no-op with one process).
        train_fn=compiled_together(
            seeds.compile_train_step(config, model, optimizer, mesh), "train_step"
        ),
        eval_fn=compiled_together(
            make_eval_step(config, model, eval_mesh, with_predictions=True), "eval_step"
        ),
        eval_counts_fn=compiled_together(
            make_eval_step(config, model, eval_mesh, with_predictions=False), "eval_counts_step"
        ),
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


def log_schedule_change(
    config: ml_collections.ConfigDict,
    run: RunSetup,
    checkpoint_step: int | None,
    changes: list[ConfigChange],
) -> None:
    """Warns what a resumed run's raised ``num_epochs`` does to the learning rate.

    A raised ``num_epochs`` rebuilds the schedule for the new total (a cosine decay is stretched,
    so its rate jumps up at the resume); the warning gives the rate of both schedules there.

    Args:
      config: the run's (new) config.
      run: its set-up.
      checkpoint_step: the step it resumes from, None for a new run.
      changes: the config changes the guard accepted (`bts_jax.workdir.check_config`).
    """
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


def record_environment(member: SeedRun, resume_step: int | None, run: RunSetup) -> None:
    """Appends this start's environment (versions, devices, code, data) to environment.json.

    A new run with ``config.model.output_bias_prior`` set also records the prior its head
    starts at (``"output_bias_prior"``: setting, prior, bias; `output_bias_record`). Every
    record says which convolutions ran (``"conv_impl"``: ``"xla"`` or ``"onednn"``).

    Args:
      member: the run (its workdir and input).
      resume_step: the step it starts from, None for a new run.
      run: its set-up (the devices).
    """
    pipeline = member.pipeline
    data = {"source": pipeline.source_examples()}
    data.update({split: pipeline.examples(split) for split in data_lib.SPLITS})
    record = workdir_lib.environment_record(
        data, step=resume_step or 0, devices=run.mesh.devices.flat
    )
    prior = None
    if resume_step is None:
        prior = output_bias_record(member.config, run.model.num_classes, member.tumour_fraction())
    if prior is not None:
        record["output_bias_prior"] = prior
    # What computed the convolutions: "auto" depends on the machine (oneDNN built or not).
    record["conv_impl"] = resolve_conv_impl(member.config.model.get("conv_impl", "xla"))
    workdir_lib.write_environment(member.workdir, record)
