"""Watching a run: step metrics fetched and checked, the progress bar, log lines."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from bts_jax.models import count_params
from bts_jax.train.run_setup import RunSetup
from bts_jax.train.seeds import SeedGroup
from bts_jax.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the run stopped before saving anything after it."""


def fetch_finite(
    pending: list[tuple[int, dict]], checkpoint_step: int | None, seeds: Sequence[int]
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


def progress_bar(iterable: Iterable, total: int, enabled: bool) -> Iterable:
    """``iterable`` wrapped in a tqdm bar of ``total`` steps when ``enabled``, else itself."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="train", leave=False, dynamic_ncols=True)


def update_progress(
    batches: Iterable,
    group: SeedGroup,
    config: Any,
    run: RunSetup,
    step: int,
    events: frozenset[str],
    epoch_start: float,
) -> None:
    """Shows the epoch, the last loss and the images/s on the progress bar (if ``batches`` is one).

    Args:
      batches: what `progress_bar` returned.
      group: the runs being trained (the first one's metrics are shown).
      config: the run's config (``batch_size``).
      run: its set-up.
      step: the step just taken.
      events: `bts_jax.train.loop.due_events` of that step.
      epoch_start: ``time.perf_counter()`` at the epoch's start.
    """
    if not hasattr(batches, "set_postfix"):
        return
    first = group.runs[0]
    done = len(first.epoch_metrics) * config.batch_size * len(group.runs)
    batches.set_postfix(
        epoch=step // run.steps_per_epoch + (0 if "epoch_end" in events else 1),
        loss=f"{first.epoch_metrics[-1]['loss']:.4f}",
        img_s=f"{done / (time.perf_counter() - epoch_start):.1f}",
    )


def log_model(run: RunSetup, abstract: TrainState, group: SeedGroup) -> None:
    """Logs the model size, the devices and steps (and the seeds trained together), on process 0."""
    if jax.process_index() == 0:
        logging.info(
            "Model: %s parameters; %d devices over %d processes; %d steps per epoch.",
            f"{count_params(abstract.params):,}",
            run.mesh.devices.size,
            jax.process_count(),
            run.steps_per_epoch,
        )
        if group.stacked:
            logging.info(
                "%d seeds in one program (seeds %s) on a %s mesh.",
                len(group.runs),
                group.seeds(),
                dict(run.mesh.shape),
            )
