"""The optimiser and its learning-rate schedule, from ``config.optimizer``."""

from __future__ import annotations

import ml_collections
import optax


def create_learning_rate_schedule(
    optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Builds the learning-rate schedule: optional linear warmup, then constant or cosine decay.

    Args:
      optimizer_config: ``config.optimizer``.
      steps_per_epoch: optimiser steps in one epoch.
      total_steps: optimiser steps of the whole run.

    Returns:
      An optax schedule (step -> learning rate).
    """
    base = float(optimizer_config.learning_rate)
    warmup = int(round(optimizer_config.warmup_epochs * steps_per_epoch))
    name = optimizer_config.schedule
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, base, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if name != "constant":
        raise ValueError(f"config.optimizer.schedule={name!r}; expected 'constant' or 'cosine'.")
    if not warmup:
        return optax.constant_schedule(base)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, base, warmup), optax.constant_schedule(base)], [warmup]
    )


def create_optimizer(
    optimizer_config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Builds Adam or AdamW (the paper's Adam at lr 1e-4 by default), with optional clipping.

    Args:
      optimizer_config: ``config.optimizer``.
      schedule: learning-rate schedule.

    Returns:
      An optax gradient transformation.
    """
    name = optimizer_config.name
    if name == "adam":
        optimizer = optax.adam(schedule)
    elif name == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=optimizer_config.weight_decay)
    else:
        raise ValueError(f"config.optimizer.name={name!r}; expected 'adam' or 'adamw'.")
    if optimizer_config.grad_clip_norm > 0:
        optimizer = optax.chain(
            optax.clip_by_global_norm(optimizer_config.grad_clip_norm), optimizer
        )
    return optimizer
