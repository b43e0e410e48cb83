"""Process set-up for multi-host runs with JAX's own distributed runtime.

A process that dies (killed, out of memory, a lost host) stops sending heartbeats to the
coordinator (process 0). After ``heartbeat_timeout_s`` without one, JAX's coordination service
declares it dead and ends every other process with an error that names the lost task (a JAX
"task" is a process index), instead of leaving them blocked in a collective forever. The
timeouts are set here explicitly rather than left to JAX's defaults, so a run's worst-case hang is
a documented number.
"""

import os

# Seconds without a heartbeat after which a process counts as dead (JAX's default is 100 s). Short
# enough that a lost peer ends a run within about a minute, long enough for a busy host's pauses.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
# Seconds the processes wait for each other to connect at start-up (JAX's default, 300 s).
DEFAULT_INITIALIZATION_TIMEOUT_S = 300
# Seconds a finished (or failed) process waits at exit for the others to finish too (JAX's default,
# 300 s): the non-zero processes wait there while process 0 writes the final files and figures.
DEFAULT_SHUTDOWN_TIMEOUT_S = 120

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
    *,
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
    initialization_timeout_s: int = DEFAULT_INITIALIZATION_TIMEOUT_S,
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S,
) -> bool:
    """Joins a multi-process run when flags or the cluster environment ask for one.

    With explicit settings, all three are required. On CPU, collectives across processes use
    gloo. Must run before anything touches a JAX device.

    Args:
      coordinator_address: "HOST:PORT" of process 0.
      num_processes: total number of processes.
      process_id: this process's index in [0, num_processes).
      heartbeat_timeout_s: seconds without a heartbeat after which a process counts as dead and
        the others stop with an error naming it (``train.py --heartbeat_timeout_s``).
      initialization_timeout_s: seconds to wait for every process to connect.
      shutdown_timeout_s: seconds a process that ends waits at exit for the others.

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
    elif not cluster_detected():
        return False
    timeouts = {
        "heartbeat_timeout_s": heartbeat_timeout_s,
        "initialization_timeout_s": initialization_timeout_s,
        "shutdown_timeout_s": shutdown_timeout_s,
    }
    for name, seconds in timeouts.items():
        if seconds < 1:
            raise ValueError(f"--{name}={seconds} must be >= 1 second.")
    _use_gloo_on_cpu()
    import jax  # Here, not at the top: train.py checks its flags before paying for JAX's import.

    # None for the three settings lets JAX read them from the launcher's environment.
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=int(initialization_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        shutdown_timeout_seconds=int(shutdown_timeout_s),
    )
    return True


def _use_gloo_on_cpu() -> None:
    # Harmless on GPU: the setting only selects the CPU backend's cross-process collectives.
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
