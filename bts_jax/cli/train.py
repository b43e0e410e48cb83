r"""Trains a bts_jax model: parses flags, sets up processes and devices, then calls the library.

    python train.py --config configs/quickstart.py --workdir workdirs/quickstart
    python train.py --config configs/default.py --workdir workdirs/paper \
        --config.data.source=folder --config.data.data_dir=/data/brain_tumor --config.dtype=bfloat16

Multi-host: start one process per host with ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (or let a SLURM/Open MPI environment provide them). If a
process dies, the others stop with an error naming it after ``--heartbeat_timeout_s``.

``--config.num_seeds=K`` trains seeds ``seed, seed + 1, ..., seed + K - 1`` together in one
program, each written as its own run in ``WORKDIR/seed_<s>/``.

Running again in a workdir resumes it. A resumed run refuses a changed config (it prints the
changed fields) unless the change is safe (e.g. a higher ``num_epochs`` extends the run) or
``--allow_config_change`` is given; a second run on a workdir in use stops at once.
"""

from absl import flags, logging

from bts_jax.cli import distributed
from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``train.py``."""
    cli_flags.define_config_flag(
        "Experiment config: a file, or the name of a packaged one (quickstart, default, test...).",
        lock=True,
    )
    cli_flags.define_workdir_flag("Directory for checkpoints, logs and plots.")
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")
    flags.DEFINE_integer(
        "heartbeat_timeout_s",
        distributed.DEFAULT_HEARTBEAT_TIMEOUT_S,
        "Multi-host runs: seconds without a heartbeat after which a process counts as dead and "
        "the others stop with an error naming it.",
    )
    flags.DEFINE_bool(
        "allow_config_change",
        False,
        "Resume a workdir whose checkpoints were trained with another config (the change is "
        "recorded in config_history.jsonl).",
    )


def main(argv: list[str]) -> None:
    """Trains ``--config`` in ``--workdir`` and prints where everything is."""
    cli_flags.no_extra_arguments(argv)
    distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
    )

    import jax

    from bts_jax import train

    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    logging.info("JAX devices: %s", jax.devices())
    results = train.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change
    )
    if jax.process_index() == 0:
        for result in results:
            title = f"Seed {result.seed}:\n" if len(results) > 1 else ""
            print(f"{title}{train.run_summary(result.workdir, result.metrics)}")


def run() -> None:
    """The ``train.py`` program (``bts-train`` once installed)."""
    define_flags()
    run_program(main, lambda argv: cli_flags.prepare_config_argument(argv, "experiment"))
