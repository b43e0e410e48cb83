"""The train state and what shapes it: optimiser, schedule, initialisation, mesh, batches.

The state is replicated over a 1-D ``("data",)`` mesh of all devices (of all processes); global
batches are sharded along their leading axis over the same mesh, so the jitted step of
`bts_jax.steps` sees the global batch and XLA inserts the collectives.

``config.num_seeds = K > 1`` trains K seeds in one program: the states of the K seeds are stacked
along a leading seed axis and the batches are (K, B, ...), on a 2-D ``("seed", "data")`` mesh of
the same devices (`make_seed_mesh`). The seed axis has `seed_axis_size` devices; each seed's batch
is sharded over the "data" axis, its state replicated along it. `unstack_train_state` and
`stack_train_states` convert between the stacked state and K ordinary single-seed states (on the
1-D mesh of the same devices), which are what is evaluated, saved and restored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
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
# The mesh axis of the seeds of a ``config.num_seeds > 1`` run.
SEED_AXIS = "seed"


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


def seed_axis_size(num_seeds: int, device_count: int) -> int:
    """Devices along the seed axis: the largest divisor of ``num_seeds`` that divides the devices.

    Args:
      num_seeds: seeds trained together (``config.num_seeds``).
      device_count: devices of the run.

    Returns:
      ``gcd(num_seeds, device_count)``; the other ``device_count / seed_axis_size`` devices of each
      seed group are data-parallel.
    """
    return math.gcd(int(num_seeds), int(device_count))


def make_seed_mesh(num_seeds: int, devices: Iterable[jax.Device] | None = None) -> Mesh:
    """Returns the 2-D ``("seed", "data")`` mesh of a ``config.num_seeds > 1`` run.

    The devices keep `make_mesh`'s order (row-major), so `flat_mesh` of it is the 1-D mesh a
    single-seed run would use.

    Args:
      num_seeds: seeds trained together.
      devices: the devices to use; default all devices of all processes.

    Returns:
      A ``Mesh`` of shape (`seed_axis_size`, num_devices / `seed_axis_size`).
    """
    devices = np.asarray(list(devices) if devices is not None else jax.devices())
    seeds = seed_axis_size(num_seeds, devices.size)
    return Mesh(devices.reshape(seeds, devices.size // seeds), (SEED_AXIS, "data"))


def flat_mesh(mesh: Mesh) -> Mesh:
    """The 1-D ``("data",)`` mesh over ``mesh``'s devices, in the same order.

    Args:
      mesh: any mesh (a seed mesh, or already a 1-D one).

    Returns:
      The mesh a single-seed run on these devices uses.
    """
    return Mesh(mesh.devices.reshape(-1), ("data",))


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


def create_seed_train_states(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
    """Initialises ``config.num_seeds`` states at once, seed k from ``config.seed + k``.

    Seed k's slice equals `create_train_state` of a config with ``seed = config.seed + k``
    exactly: the initialisation is the same function, vmapped over the seeds' keys.

    Args:
      config: experiment config (``seed``, ``num_seeds``, ``data.image_size``).
      model: the segmentation model.
      optimizer: the optax transformation whose state is initialised.
      mesh: a `make_seed_mesh` mesh; the seed axis of the state is sharded over its "seed" axis.

    Returns:
      A TrainState whose every leaf has a leading seed axis of size ``config.num_seeds``.
    """
    init = _init_fn(int(config.data.image_size), model, optimizer)
    # The raw key data of each seed's key, so the keys are exactly those of single runs.
    keys = np.stack(
        [
            np.asarray(jax.random.key_data(jax.random.key(int(config.seed) + k)))
            for k in range(int(config.num_seeds))
        ]
    )
    seeded = NamedSharding(mesh, P(SEED_AXIS))
    return jax.jit(
        jax.vmap(lambda data: init(jax.random.wrap_key_data(data))), out_shardings=seeded
    )(keys)


def _stack(*states: TrainState) -> TrainState:
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)


def _seed_slice(state: TrainState, k: int) -> TrainState:
    return jax.tree_util.tree_map(lambda x: x[k], state)


def _unstack(state: TrainState) -> tuple[TrainState, ...]:
    num_seeds = jax.tree_util.tree_leaves(state)[0].shape[0]
    return tuple(_seed_slice(state, k) for k in range(num_seeds))


def stack_train_states(states: Sequence[TrainState], mesh: Mesh) -> TrainState:
    """Stacks single-seed states (e.g. restored ones) into one with a leading seed axis.

    Args:
      states: K states of the same structure (any shardings over ``mesh``'s devices).
      mesh: a `make_seed_mesh` mesh.

    Returns:
      The stacked TrainState, its seed axis sharded over the "seed" mesh axis.
    """
    return jax.jit(_stack, out_shardings=NamedSharding(mesh, P(SEED_AXIS)))(*states)


def unstack_train_state(state: TrainState, mesh: Mesh) -> list[TrainState]:
    """Splits a stacked state into its seeds' states, each replicated like a single run's.

    Args:
      state: a TrainState with a leading seed axis (from `create_seed_train_states` or a step).
      mesh: the 1-D mesh of the same devices (`flat_mesh`).

    Returns:
      K TrainStates, seed order, replicated over ``mesh``.
    """
    return list(jax.jit(_unstack, out_shardings=NamedSharding(mesh, P()))(state))


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


def make_seed_batch(
    local_batches: Sequence[Mapping[str, np.ndarray]], mesh: Mesh
) -> dict[str, jax.Array]:
    """Stacks the seeds' batches of one step into global (K, B, ...) arrays.

    Args:
      local_batches: one batch per seed (``DEVICE_KEYS`` used), each as `make_global_batch` takes.
      mesh: a `make_seed_mesh` mesh (one process).

    Returns:
      ``jax.Array`` s with a leading seed axis, sharded over "seed" and their batch axis over
      "data".
    """
    sharding = NamedSharding(mesh, P(SEED_AXIS, "data"))
    return {
        key: jax.make_array_from_process_local_data(
            sharding, np.stack([np.asarray(batch[key]) for batch in local_batches])
        )
        for key in DEVICE_KEYS
    }
