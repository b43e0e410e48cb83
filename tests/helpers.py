"""Helpers shared by the test modules (pytest puts tests/ on the path: ``import helpers``)."""

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping

import jax
import ml_collections

from bts_jax import data as data_lib
from bts_jax import sharding
from bts_jax import train as train_lib
from bts_jax.config_tools import apply_overrides
from bts_jax.configs import test as test_config
from bts_jax.train import state as state_lib


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """``configs/test.py`` with dotted overrides: ``tiny_config(**{"data.image_size": 64})``."""
    return apply_overrides(test_config.get_config(), overrides, "tiny_config")


# Two stages at 16 px: the smallest U-Net with an encoder, a bottleneck and a decoder that still
# holds every block of the paper model (GSConv and ECA in each). Tests that train in several
# processes, kill and resume, or run whole sweeps pay mostly for compiling: at half the layers of
# `configs/test.py` their programs compile in about half the time, and every fact they check
# (bit-identical resume, equal parameters across hosts, complete cells) is about the loop, not
# the model's size.
SMALL_MODEL = {"model.features": (4, 8), "data.image_size": 16}


def small_config(**overrides) -> ml_collections.ConfigDict:
    """`tiny_config` at `SMALL_MODEL`'s two stages and 16 px, with dotted ``overrides``."""
    return tiny_config(**{**SMALL_MODEL, **overrides})


def resumable_config() -> ml_collections.ConfigDict:
    """The run that kill-and-resume tests replay: `small_config`, 2 epochs, a save every 2 steps.

    ``tests/kill_worker.py`` trains exactly this, so its killed and resumed runs can be compared
    bit for bit with the uninterrupted run of ``tests/test_train.py``.
    """
    return small_config(num_epochs=2, **{"checkpoint.every_steps": 2})


def params_of(state):
    """A train state's parameters, on the host."""
    return jax.device_get(state.params)


def first_batches(config, n: int, *, process_index: int = 0, process_count: int = 1) -> list:
    """The first ``n`` training batches of epoch 0 that host ``process_index`` reads."""
    batches = []
    batches_of_epoch = data_lib.make_dataset(
        config, "train", process_index=process_index, process_count=process_count
    )
    for batch in batches_of_epoch:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def run_steps(config, mesh, batches):
    """Trains ``batches`` from ``config``'s initial state on ``mesh``: (state, last metrics)."""
    run = train_lib.setup_run(config, mesh)
    state = state_lib.create_train_state(config, run.model, run.optimizer, mesh)
    for batch in batches:
        state, step_metrics = run.train_fn(state, sharding.make_global_batch(batch, mesh))
    return state, jax.device_get(step_metrics)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# helpers.SMALL_MODEL on the command line: when the command line is under test, not the model.
SMALL_MODEL_FLAGS = ("--config.model.features=(4, 8)", "--config.data.image_size=16")


def run_train_py(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs ``python train.py --config configs/test.py FLAGS`` from the repository, on the CPU.

    Args:
      *flags: the rest of the command line (``--workdir``, ``--config.*``).
      timeout: seconds before the run is killed (and the test fails).

    Returns:
      The finished process, its stdout and stderr as text.
    """
    return subprocess.run(
        [sys.executable, "train.py", "--config", "configs/test.py", *flags],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def defined_flags():
    """absl's global flags, with whatever the block defines removed again at its end.

    The programs define their flags into one global registry; removing them lets one test
    process define the flags of several programs in turn, as each program does alone, and
    keeps a test that imports a script (which defines its flags on import) from leaving them to
    the tests after it.
    """
    from absl import flags

    before = set(flags.FLAGS)
    try:
        yield flags.FLAGS
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()


def read_text(*path: str) -> str:
    """The text of the file at ``os.path.join(*path)``."""
    with open(os.path.join(*path)) as f:
        return f.read()


def copy_workdir(workdir: str, parent) -> str:
    """A private copy of a workdir (e.g. `trained_workdir`) in the folder ``parent``, to change."""
    copy = parent / os.path.basename(workdir)
    shutil.copytree(workdir, copy)
    return str(copy)


class LoggedProcess:
    """A child process whose stdout and stderr go to a file instead of a pipe.

    Processes started together and then read one after the other through pipes can deadlock: a
    process nobody reads yet blocks once its pipe holds 64 KiB (warnings on a loaded machine are
    enough), before it reaches the collective or the shutdown barrier that the process being read
    waits on. A file never fills, so every process runs to its end.
    """

    def __init__(self, command: list[str], log_path, **popen_kwargs):
        self.log_path = os.fspath(log_path)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, text=True, **popen_kwargs
            )

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (negative: killed by that signal)."""
        return self.process.returncode

    def output(self, timeout: float) -> str:
        """Waits up to ``timeout`` seconds for the process to end; returns all it printed."""
        self.process.wait(timeout=timeout)
        return read_text(self.log_path)

    def successful_output(self, timeout: float = 300) -> str:
        """``output(timeout)``, failing the test with the output's tail if the exit was not 0."""
        output = self.output(timeout)
        assert self.returncode == 0, output[-3000:]
        return output

    def kill(self) -> None:
        """Ends the process now if it still runs (e.g. when a test using it fails)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running_scripts(
    commands: Mapping[str, list[str]], log_dir, cwd: str
) -> Iterator[dict[str, LoggedProcess]]:
    """Starts each named script (``[script, *flags]``) with this Python on the CPU, all at once.

    Yields the processes by name, each logging to ``log_dir/NAME.log``; kills those still running
    on exit, so a failing test leaves none behind. Tests that start their scripts in a fixture
    wait for each in turn with ``successful_output``, so the scripts run side by side.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = {
        name: LoggedProcess(
            [sys.executable, *command], os.path.join(log_dir, f"{name}.log"), cwd=cwd, env=env
        )
        for name, command in commands.items()
    }
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()


def start_scripts_early_if_selected(request, fixture: str = "scripts") -> None:
    """Starts a module's ``fixture`` of scripts with its first test, if a selected test reads it.

    The script fixtures start their programs at once and let them run beside the module's other
    tests (mostly compiling, each in its own process). Started from an autouse fixture, they
    overlap with every test of the module; skipped when no selected test reads them (the fast
    tier deselects the script tests), so no process is started only to be killed.
    """
    selected = (item for item in request.session.items if item.module is request.module)
    if any(fixture in item.fixturenames for item in selected):
        request.getfixturevalue(fixture)
