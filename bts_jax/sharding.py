"""Meshes and global batches: how arrays are laid out over the devices of all processes.

A run's state is replicated over a 1-D ``("data",)`` mesh of all devices (of all processes);
global batches are sharded along their leading axis over the same mesh, so a jitted step sees the
global batch and XLA inserts the collectives (docs/architecture.md).

``config.num_seeds = K > 1`` trains K seeds in one program on a 2-D ``("seed", "data")`` mesh of
the same devices (`make_seed_mesh`): the seed axis has `seed_axis_size` devices, each seed's batch
is sharded over the "data" axis and its state replicated along it.

With several processes, `compiled_together` makes every process compile a step before any runs it,
so their first collective starts together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Keys of a batch that live on devices; the rest ("id") stays on the host.
DEVICE_KEYS = ("image", "mask", "valid")


# The mesh axis of the seeds of a ``config.num_seeds > 1`` run.
SEED_AXIS = "seed"


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


def host_local(array: jax.Array, mesh: Mesh) -> np.ndarray:
    """This host's rows of a batch-sharded global array, in the order of its local batch.

    Args:
      array: a global array sharded along its leading axis over the "data" axis of ``mesh``.
      mesh: the device mesh.

    Returns:
      The rows of this process's devices, as numpy.
    """
    if jax.process_count() == 1:
        return np.asarray(array)
    return np.asarray(multihost_utils.global_array_to_host_local_array(array, mesh, P("data")))


# How long a process waits at `CompiledTogether`'s barrier for the others to finish compiling: a
# paper-size step on a slow host compiles in minutes; a process that died is found sooner by the
# heartbeat (`bts_jax.cli.distributed`).
COMPILE_BARRIER_TIMEOUT_S = 1800

# Numbers the barriers: every process builds its steps in the same order, so the n-th barrier has
# the same name on all of them, and no name is waited on twice.
_barrier_numbers = itertools.count()


class CompiledTogether:
    """A jitted step that every process has compiled before any process runs it.

    On CPU, a multi-process run's first collective sets up gloo, which gives the processes 30 s to
    join. A process still compiling by then (on a loaded machine, or when its peer found the step
    in its compilation cache) ends the run with "Gloo context initialization failed". So on the
    first call this compiles the step for its arguments (jit keeps the executable: the call that
    follows does not compile again), then waits at a barrier of the coordination service, whose
    timeout is `COMPILE_BARRIER_TIMEOUT_S`, and only then runs it. Use `compiled_together`.
    """

    def __init__(self, step: Any, name: str):
        self.step = step
        self.barrier = f"bts_jax/{name}/compiled/{next(_barrier_numbers)}"
        self.compiled = False

    def lower(self, *args, **kwargs):
        """The jitted step's ``lower`` (for ahead-of-time compilation, as benchmarks do)."""
        return self.step.lower(*args, **kwargs)

    def __call__(self, *args):
        """Runs the step; the first call compiles it and waits for the other processes first."""
        if not self.compiled:
            self.step.lower(*args).compile()
            wait_for_all_processes(self.barrier, COMPILE_BARRIER_TIMEOUT_S)
            self.compiled = True
        return self.step(*args)


def compiled_together(step: Any, name: str) -> Callable:
    """``step`` itself with one process; else a `CompiledTogether` that compiles before it meets.

    Args:
      step: a jitted function (it has ``lower``).
      name: what the step is, for the barrier's name ("train_step").

    Returns:
      A callable with the step's signature.
    """
    if jax.process_count() == 1:
        return step
    return CompiledTogether(step, name)


def wait_for_all_processes(name: str, timeout_s: int) -> None:
    """Returns once every process has called this with ``name``: not a collective, so no gloo.

    Args:
      name: the barrier's name; each name is waited on once.
      timeout_s: seconds to wait before the run ends with the coordination service's error.
    """
    if jax.process_count() == 1:
        return
    # jax.distributed has no public barrier with a timeout of our choosing; its client has
    # (as jax.experimental.array_serialization and orbax use it).
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # Processes that jax.distributed did not start (e.g. TPU pods).
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))
