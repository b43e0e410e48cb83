"""What a run derives from its config (`RunSetup`), makes of an epoch and counts of its time.

`epoch_row` is an epoch's row of ``metrics.jsonl``; `RunClock` how long a run has trained.

A module of its own, below `setup` (which builds a `RunSetup`), `seeds` and `monitor` (which take
one), so that those import it and not each other: imports within ``bts_jax.train`` have no cycle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import numpy as np
import optax
from jax.sharding import Mesh


@dataclasses.dataclass
class RunSetup:
    """What a run derives from its config: the model, optimiser, meshes and compiled steps.

    Attributes:
      model: the segmentation model.
      optimizer: the optax transformation.
      schedule: the learning-rate schedule (step -> rate).
      mesh: the device mesh of the train step: ``("data",)``, or ``("seed", "data")`` for
        ``config.num_seeds > 1``.
      eval_mesh: the 1-D ``("data",)`` mesh of the same devices, on which one seed's state is
        evaluated, saved and restored (``mesh`` itself for one seed).
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
    eval_mesh: Mesh
    steps_per_epoch: int
    total_steps: int
    train_fn: Callable
    eval_fn: Callable
    eval_counts_fn: Callable


def epoch_row(
    step: int,
    run: RunSetup,
    batch_size: int,
    epoch_metrics: list[dict],
    elapsed: float,
    resumed_losses: Sequence[float] = (),
) -> dict[str, float]:
    """One epoch's row of ``metrics.jsonl``: train loss, learning rate and images/s.

    Args:
      step: the epoch's last step.
      run: the run's set-up (steps per epoch, schedule).
      batch_size: images per step.
      epoch_metrics: the epoch's fetched step metrics since the run (re)started.
      elapsed: seconds those steps took.
      resumed_losses: the losses of the epoch's steps before a resume (from the save).

    Returns:
      ``{"epoch", "step", "train_loss", "learning_rate", "train_images_per_s"}``.
    """
    losses = [*resumed_losses, *(m["loss"] for m in epoch_metrics)]
    return {
        "epoch": step // run.steps_per_epoch,
        "step": step,
        # Every step of the epoch, those before a resume included; float32, as fetched.
        "train_loss": float(np.mean(np.asarray(losses, np.float32))),
        "learning_rate": float(run.schedule(step)),
        "train_images_per_s": len(epoch_metrics) * batch_size / elapsed,
    }


@dataclasses.dataclass
class RunClock:
    """How long a run has trained: the sittings before its last resume, then this one.

    A resumed run counts from the seconds its save recorded (``meta["wall_s"]``), so the time a
    killed sitting spent after its last save (work the resume redoes) is not counted twice. Saves
    from before the field start the count at the resume.

    Attributes:
      before: seconds of training up to the save this sitting resumed from (0 for a new run).
      started: ``time.perf_counter()`` when this sitting began (before set-up and compilation).
    """

    before: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """The run's training seconds so far: ``before`` plus this sitting's."""
        return self.before + time.perf_counter() - self.started
