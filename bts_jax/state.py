"""The train state and what shapes it: optimiser, schedule, initialisation, mesh, batches.

The state is replicated over a 1-D ``("data",)`` mesh of all devices (of all processes); global
batches are sharded along their leading axis over the same mesh, so the jitted step of
`bts_jax.steps` sees the global batch and XLA inserts the collectives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Keys of a batch that live on devices; the rest ("id") stays on the host.
DEVICE_KEYS = ("image", "mask", "valid")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: number of optimiser updates done, int32 scalar.
      params: model parameters (float32).
      batch_stats: BatchNorm running statistics (float32).
      opt_state: optax state.
      rng: raw key data (uint32) of the run's base key; the step folds in the step number, so
        restoring it and the step restores every future random draw.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def make_mesh(devices: Iterable[jax.Device] | None = None) -> Mesh:
    """Returns a 1-D mesh with axis "data" over ``devices``.

    Args:
      devices: the devices to use; default all devices of all processes.

    Returns:
      A ``Mesh`` of shape (num_devices,) with axis name "data".
    """
    devices = np.asarray(list(devices) if devices is not None else jax.devices())
    return Mesh(devices, ("data",))


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


def _init_fn(image_size: int, model: nn.Module, optimizer: optax.GradientTransformation):
    """Returns a pure function rng -> TrainState at step 0."""

    def init(rng):
        init_rng, run_rng = jax.random.split(rng)
        dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
        variables = model.init(init_rng, dummy, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(run_rng),
        )

    return init


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
    """Initialises the train state from ``config.seed``, replicated over ``mesh``.

    Args:
      config: experiment config (``seed``, ``data.image_size``).
      model: the segmentation model.
      optimizer: the optax transformation whose state is initialised.
      mesh: device mesh; the state is replicated on all its devices.

    Returns:
      A TrainState at step 0.
    """
    init = _init_fn(int(config.data.image_size), model, optimizer)
    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(jax.random.key(config.seed))


def abstract_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
    """The shapes, dtypes and (replicated) shardings of the train state, computing nothing.

    Restoring a checkpoint into this skips the initialisation's compilation.

    Args:
      config: experiment config.
      model: the segmentation model.
      optimizer: the optax transformation.
      mesh: device mesh.

    Returns:
      A TrainState of ``jax.ShapeDtypeStruct`` leaves.
    """
    init = _init_fn(int(config.data.image_size), model, optimizer)
    shapes = jax.eval_shape(init, jax.random.key(config.seed))
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global, data-sharded batch from this host's local batch.

    Args:
      local_batch: this host's numpy batch (the keys in ``DEVICE_KEYS`` are used), leading axis
        ``global batch / process count``.
      mesh: the device mesh.

    Returns:
      Global ``jax.Array`` s sharded along the leading axis over the "data" mesh axis.
    """
    sharding = NamedSharding(mesh, P("data"))
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
        for key in DEVICE_KEYS
    }
