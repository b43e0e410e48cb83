"""Meshes and global batches: how arrays are laid out over the devices of all processes.

A run's state is replicated over a 1-D ``("data",)`` mesh of all devices (of all processes);
global batches are sharded along their leading axis over the same mesh, so a jitted step sees the
global batch and XLA inserts the collectives (docs/architecture.md).

``config.num_seeds = K > 1`` trains K seeds in one program on a 2-D ``("seed", "data")`` mesh of
the same devices (`make_seed_mesh`): the seed axis has `seed_axis_size` devices, each seed's batch
is sharded over the "data" axis and its state replicated along it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

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
