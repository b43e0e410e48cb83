"""Seeds trained together in one program: everything about the seed axis, behind `SeedGroup`.

A run trains a `SeedGroup`: one `SeedRun` per seed, each an ordinary run with its own config,
workdir, input, logger, checkpoints and best mIoU. A plain run is a group of one, and nothing is
stacked. ``config.num_seeds = K > 1`` gives a group of K seeds ``config.seed + k``: their states
are stacked along a leading seed axis on a ``("seed", "data")`` mesh (`bts_jax.sharding`), their
batches stacked (K, B, ...), and the train step vmapped over the seeds (`make_seeds_train_step`);
at an epoch's end or a save, `SeedGroup.per_seed_states` gives each seed the replicated state of
its single run, which is what is evaluated, logged and saved in its own workdir. Seed k ends with
the parameters of a single run of seed ``config.seed + k`` up to float rounding (vmapped
convolutions become grouped ones, whose sums are ordered differently); docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from bts_jax import data as data_lib
from bts_jax import evaluation
from bts_jax import workdir as workdir_lib
from bts_jax.sharding import (
    SEED_AXIS,
    flat_mesh,
    make_global_batch,
    make_seed_batch,
    make_seed_mesh,
)
from bts_jax.train.run_setup import RunClock, RunSetup, epoch_row
from bts_jax.train.state import (
    TrainState,
    create_seed_train_states,
    create_train_state,
    output_bias_record,
    prior_fraction,
    stack_train_states,
    unstack_train_state,
)
from bts_jax.train.steps import make_seeds_train_step, make_train_step


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


@dataclasses.dataclass
class SeedRun:
    """One seed's own run: what it trains on, where it writes, and how it is doing.

    Attributes:
      config: the run's config (``num_seeds = 1``: the single run of this seed).
      workdir: its folder.
      pipeline: its input.
      log_prefix: put before its log lines ("" for a plain run, "seed <s> " in a group).
      writer: its metric logger.
      latest: its Orbax manager of the latest saves.
      best: its Orbax manager of the best save.
      best_miou: the best validation mIoU so far.
      epoch_metrics: the fetched step metrics of the current epoch (since the run started).
      resumed_losses: the losses of the current epoch's steps before a resume, from the save.
      train_fraction: its training split's tumour pixel fraction, once `tumour_fraction` read it.
      clock: how long it has trained (``wall_s`` of its rows and saves).
    """

    config: ml_collections.ConfigDict
    workdir: str
    pipeline: data_lib.InputPipeline
    log_prefix: str = ""
    writer: workdir_lib.MetricLogger | None = None
    latest: Any = None
    best: Any = None
    best_miou: float = -math.inf
    epoch_metrics: list[dict] = dataclasses.field(default_factory=list)
    resumed_losses: list[float] = dataclasses.field(default_factory=list)
    train_fraction: float | None = None
    clock: RunClock = dataclasses.field(default_factory=RunClock)

    def tumour_fraction(self) -> float | None:
        """The training split's tumour pixel fraction if the prior is ``"auto"``, else None.

        Only the training split's masks are read (`bts_jax.data.tumour_pixel_fraction`), once.
        """
        if self.train_fraction is None:
            self.train_fraction = prior_fraction(self.config, self.pipeline.cache)
        return self.train_fraction

    def restore_history(self, meta: dict[str, Any]) -> None:
        """Takes the history, best mIoU, epoch and seconds of a restored save (or a new run's)."""
        self.writer.history = list(meta["history"])
        self.best_miou = -math.inf if meta["best_miou"] is None else meta["best_miou"]
        # Saves from before the epoch's losses were kept resume the epoch's mean from the resume.
        self.resumed_losses = list(meta.get("epoch_losses", []))
        self.clock.before = float(meta.get("wall_s") or 0.0)

    def meta(self) -> dict[str, Any]:
        """What a save holds besides the state: history, best mIoU, epoch losses, ``wall_s``.

        The losses let a run resumed mid-epoch write that epoch's ``train_loss`` as the
        uninterrupted run does (float32 values, kept exactly as JSON numbers).
        """
        best = None if self.best_miou == -math.inf else self.best_miou
        losses = self.resumed_losses + [float(m["loss"]) for m in self.epoch_metrics]
        return {
            "history": self.writer.history,
            "best_miou": best,
            "epoch_losses": losses,
            "wall_s": self.clock.seconds(),
        }

    def close_epoch(
        self, state: TrainState, run: RunSetup, step: int, elapsed: float, *, evaluate: bool
    ) -> bool:
        """Writes this run's epoch row, validating it when due; its ``wall_s`` is read last.

        Returns:
          Whether the validation mIoU improved on the best so far.
        """
        row = epoch_row(
            step, run, self.config.batch_size, self.epoch_metrics, elapsed, self.resumed_losses
        )
        improved = False
        if evaluate:
            val = evaluation.evaluate(
                run.eval_counts_fn,
                state,
                self.pipeline.eval_batches("validation"),
                run.eval_mesh,
                num_classes=run.model.num_classes,
                per_image=False,
            ).metrics
            row.update(val_loss=val["loss"], val_miou=val["miou"], val_dice=val["dice"])
            improved = row["val_miou"] > self.best_miou
            self.best_miou = max(self.best_miou, row["val_miou"])
        row["wall_s"] = self.clock.seconds()
        self.writer.write(row)
        if jax.process_index() == 0:
            logging.info(
                "%sepoch %d: %s",
                self.log_prefix,
                row["epoch"],
                ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
            )
        self.epoch_metrics, self.resumed_losses = [], []
        return improved

    def save(self, state: TrainState, step: int, *, best: bool, latest: bool) -> None:
        """Saves this run's state as its best and/or latest checkpoint of ``step``."""
        if not (best or latest):
            return
        meta = self.meta()
        if best:
            workdir_lib.save_checkpoint(self.best, step, state, meta, {"val_miou": self.best_miou})
        if latest:
            # A latest save whose meta names a best mIoU must never outlive the best save it names:
            # a kill between the two would leave best/ without the selected model.
            self.best.wait_until_finished()
            workdir_lib.save_checkpoint(self.latest, step, state, meta)


def train_mesh(num_seeds: int, mesh: Mesh) -> Mesh:
    """The mesh of the train step: ``mesh``, or its devices as a ``("seed", "data")`` mesh.

    Args:
      num_seeds: seeds trained together (``config.num_seeds``).
      mesh: the run's devices (any mesh).

    Returns:
      ``mesh`` for one seed; `bts_jax.sharding.make_seed_mesh` of its devices for several.
    """
    if num_seeds > 1 and SEED_AXIS not in mesh.axis_names:
        return make_seed_mesh(num_seeds, mesh.devices.flat)
    return mesh


def eval_mesh(num_seeds: int, mesh: Mesh) -> Mesh:
    """The 1-D mesh on which one seed's state is evaluated, saved and restored.

    Args:
      num_seeds: seeds trained together.
      mesh: the train mesh (`train_mesh`).

    Returns:
      ``mesh`` itself for one seed; the ``("data",)`` mesh of its devices for several.
    """
    return flat_mesh(mesh) if num_seeds > 1 else mesh


def compile_train_step(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable:
    """The jitted train step: `make_train_step`, vmapped over the seeds for ``num_seeds > 1``.

    Args:
      config: experiment config.
      model: the segmentation model.
      optimizer: the optax transformation.
      mesh: the train mesh (`train_mesh`).

    Returns:
      ``(state, global_batch) -> (state, metrics)``.
    """
    make = make_seeds_train_step if num_seeds_of(config) > 1 else make_train_step
    return make(config, model, optimizer, mesh)


def empty_meta() -> dict[str, Any]:
    """The ``meta`` of a run that has saved nothing yet."""
    return {"history": [], "best_miou": None, "epoch_losses": []}


def seed_workdirs(workdir: str, configs: Sequence[ml_collections.ConfigDict]) -> list[str]:
    """The workdirs of a group's runs: ``workdir`` itself, or ``workdir/seed_<s>/`` per seed."""
    if len(configs) == 1:
        return [workdir]
    return [workdir_lib.seed_workdir(workdir, single.seed) for single in configs]


class SeedGroup:
    """The runs trained together in one program: one for a plain run, K for ``num_seeds = K``.

    Owns the seed axis: the mesh it lives on, the stacked state, the stacked batches, splitting
    step metrics per seed, and giving each seed its own state to evaluate and save. A group of one
    stacks nothing: its state, batches and metrics are those of a plain run.

    Attributes:
      runs: one `SeedRun` per seed, in seed order.
    """

    def __init__(self, runs: Sequence[SeedRun]):
        self.runs = list(runs)
        if len(self.runs) > 1:
            for run in self.runs:
                run.log_prefix = f"seed {run.config.seed} "

    @property
    def stacked(self) -> bool:
        """Whether the state and batches have a leading seed axis (more than one seed)."""
        return len(self.runs) > 1

    def initial_state(
        self,
        config: ml_collections.ConfigDict,
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
    ) -> TrainState:
        """Every seed's state at step 0 (seed k from ``config.seed + k``), on the train mesh.

        The head's bias starts at each seed's ``config.model.output_bias_prior`` (logged).
        """
        fractions = [run.tumour_fraction() for run in self.runs]
        for run, fraction in zip(self.runs, fractions, strict=True):
            record = output_bias_record(run.config, model.num_classes, fraction)
            if record and jax.process_index() == 0:
                logging.info("%smodel.output_bias_prior: %s", run.log_prefix, record)
        if self.stacked:
            auto = fractions[0] is not None
            return create_seed_train_states(
                config, model, optimizer, mesh, train_fractions=fractions if auto else None
            )
        return create_train_state(config, model, optimizer, mesh, train_fraction=fractions[0])

    def restore(
        self, abstract: TrainState, step: int, mesh: Mesh
    ) -> tuple[TrainState, list[dict[str, Any]]]:
        """Every seed's state and meta from its save of ``step``, stacked on the train ``mesh``.

        Args:
          abstract: one seed's abstract state, on the eval mesh (`eval_mesh`).
          step: the step every seed resumes from.
          mesh: the train mesh.

        Returns:
          The (stacked) state and one meta per seed.

        Raises:
          RuntimeError: a seed has no save of ``step``.
        """
        states, metas = [], []
        for run in self.runs:
            if step not in run.latest.all_steps():
                raise RuntimeError(
                    f"{run.workdir} has no save of step {step}, the latest step every seed has "
                    f"reached (its saves: {sorted(run.latest.all_steps())}), so the seeds cannot "
                    "resume together; train them in a new workdir."
                )
            state, meta = workdir_lib.restore_checkpoint(run.latest, abstract, step)
            states.append(state)
            metas.append(meta)
        if not self.stacked:
            return states[0], metas
        logging.info("Resumed %d seeds from step %d.", len(self.runs), step)
        return stack_train_states(states, mesh), metas

    def train_batches(self, start_step: int) -> Iterator[tuple[dict[str, np.ndarray], ...]]:
        """Each step's host-local batches, one per seed, from ``start_step`` to the run's end.

        The seeds' inputs advance in step; if one ended early, the run ends there (an error).
        """
        batches = (run.pipeline.train_batches(start_step=start_step) for run in self.runs)
        return zip(*batches, strict=False)

    def global_batch(
        self, local: Sequence[dict[str, np.ndarray]], mesh: Mesh
    ) -> dict[str, jax.Array]:
        """One step's global batch on the train mesh: (B, ...) arrays, or (K, B, ...) stacked."""
        if self.stacked:
            return make_seed_batch(local, mesh)
        return make_global_batch(local[0], mesh)

    def add_step_metrics(self, fetched: Sequence[dict[str, Any]]) -> None:
        """Gives each seed its values of fetched step metrics (one entry per seed when stacked)."""
        for k, run in enumerate(self.runs):
            if self.stacked:
                run.epoch_metrics += [{key: value[k] for key, value in m.items()} for m in fetched]
            else:
                run.epoch_metrics += list(fetched)

    def per_seed_states(self, state: TrainState, eval_mesh: Mesh) -> list[TrainState]:
        """Each seed's own state, replicated on ``eval_mesh`` like a single run's."""
        return unstack_train_state(state, eval_mesh) if self.stacked else [state]

    def seeds(self) -> list[int]:
        """The seeds, in order."""
        return [int(run.config.seed) for run in self.runs]


def common_step(workdirs: Sequence[str], steps: Sequence[int | None]) -> int | None:
    """The step every run of a group resumes from: the earliest of their latest saves.

    Args:
      workdirs: the runs' folders.
      steps: their latest complete saves (None: none).

    Returns:
      The step, or None for a new run.

    Raises:
      RuntimeError: some runs have saves and others none.
    """
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
