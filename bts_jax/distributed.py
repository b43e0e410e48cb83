"""Process set-up for multi-host runs with JAX's own distributed runtime."""

import os

import jax

# Environment variables of launchers whose settings jax.distributed.initialize() reads itself.
_CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process job JAX can join on its own.

    Args:
      environ: environment variables (default ``os.environ``).

    Returns:
      True when a launcher (SLURM, Open MPI) or ``JAX_COORDINATOR_ADDRESS`` names more than one
      process.
    """
    environ = os.environ if environ is None else environ
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return any(int(environ.get(name, "1") or 1) > 1 for name in _CLUSTER_SIZE_VARIABLES)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process run when flags or the cluster environment ask for one.

    With explicit settings, all three are required. On CPU, collectives across processes use
    gloo. Must run before anything touches a JAX device.

    Args:
      coordinator_address: "HOST:PORT" of process 0.
      num_processes: total number of processes.
      process_id: this process's index in [0, num_processes).

    Returns:
      True when ``jax.distributed`` was initialised.

    Raises:
      ValueError: when only some of the settings are given, or they are inconsistent.
    """
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if any(value is not None for value in given.values()):
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(f"Multi-host runs need all of {list(given)}; missing {missing}.")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
        _use_gloo_on_cpu()
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if cluster_detected():
        _use_gloo_on_cpu()
        jax.distributed.initialize()
        return True
    return False


def _use_gloo_on_cpu() -> None:
    # Harmless on GPU: the setting only selects the CPU backend's cross-process collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
