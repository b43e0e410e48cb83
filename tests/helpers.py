"""Helpers shared by the test modules (pytest puts tests/ on the path: ``import helpers``)."""

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping

import ml_collections

from bts_jax.config_tools import apply_overrides
from bts_jax.configs import test as test_config


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """``configs/test.py`` with dotted overrides: ``tiny_config(**{"data.image_size": 64})``."""
    return apply_overrides(test_config.get_config(), overrides, "tiny_config")


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
