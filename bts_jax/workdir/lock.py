"""A workdir can be written, and one run uses it at a time.

`bts_jax.train.train_and_evaluate` runs these before it builds or compiles anything:

1. `prepare_workdir`: the folder is created and a probe file written and removed, so a workdir
   whose parent is a file, that is read-only or on a full disk fails at once with the path and the
   reason.
2. `WorkdirLock`: an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for the run's lifetime,
   with the holder's pid and host written in it. A second run on the same workdir stops at once
   and names the holder. The OS drops the lock when its process dies (even by ``kill -9``), so a
   lock file left by a killed run is taken over, with a warning naming the dead holder. In a
   multi-host run each process locks its own file (``.lock`` for process 0, ``.lock.<i>`` for
   process i): on a shared filesystem the processes of one run do not block each other, and every
   process of a second launch stops at once instead of waiting for peers that stopped. flock works
   across hosts on NFSv4 and Lustre; where the filesystem cannot lock at all, the run goes on
   without a lock and logs a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Any

from absl import logging

from bts_jax import jsonio
from bts_jax.workdir.layout import LOCK_FILE


class WorkdirNotWritableError(OSError):
    """The workdir cannot be created or written (the message gives the path and the reason)."""


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir's lock."""


def _blocking_file(path: str) -> str | None:
    # The nearest existing ancestor that is a file, not a folder: what makes makedirs fail.
    parent = path
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent if parent and not os.path.isdir(parent) else None


def prepare_workdir(workdir: str | os.PathLike) -> str:
    """Creates ``workdir`` if needed and checks that files can be written in it.

    A probe file of 64 KiB is written, synced and removed, so a missing permission, a read-only
    or full filesystem, or a parent that is a file fails here, before any compilation.

    Args:
      workdir: the run's directory.

    Returns:
      The absolute path of the workdir.

    Raises:
      WorkdirNotWritableError: naming the path and the reason.
    """
    path = os.path.abspath(os.fspath(workdir))
    blocking = _blocking_file(path)
    if blocking is not None:
        raise WorkdirNotWritableError(
            errno.ENOTDIR, f"Cannot create the workdir {path}: {blocking} is a file, not a folder."
        )
    probe = os.path.join(path, f".write_probe.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise WorkdirNotWritableError(
            e.errno, f"Cannot write in the workdir {path}: {e.strerror or e}."
        ) from e
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    return path


def lock_path(workdir: str | os.PathLike, process_index: int = 0) -> str:
    """The lock file of one process of a run: ``.lock`` (process 0) or ``.lock.<i>``.

    Args:
      workdir: the run's directory.
      process_index: ``jax.process_index()``.

    Returns:
      The path of the lock file.
    """
    name = LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}"
    return os.path.join(os.fspath(workdir), name)


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def lock_holder(workdir: str | os.PathLike, process_index: int = 0) -> str | None:
    """Who holds a workdir's lock now, or None when no live process does. Creates nothing.

    Args:
      workdir: a run's folder.
      process_index: the process whose lock file to probe.

    Returns:
      A description of the live holder ("process P on host H, started T"), or None.
    """
    path = lock_path(workdir, process_index)
    if not os.path.isfile(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
    except OSError:  # a filesystem without locks: nobody can be seen holding it
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class WorkdirLock:
    """An exclusive lock on a workdir for one process of a run; a context manager.

    Attributes:
      path: the lock file.
    """

    def __init__(self, workdir: str | os.PathLike, process_index: int = 0):
        self.path = lock_path(workdir, process_index)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or fails at once naming the live holder.

        Raises:
          WorkdirLockedError: another process holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            workdir = os.path.dirname(os.path.abspath(self.path))
            raise WorkdirLockedError(
                f"The workdir {workdir} is in use by another run ({holder}; lock file "
                f"{self.path}). Two runs in one workdir would interleave their checkpoints: "
                "wait for it to end, stop it, or use another --workdir."
            ) from None
        except OSError as e:  # e.g. ENOLCK: a filesystem without locks.
            os.close(fd)
            logging.warning("Cannot lock %s (%s); running without a workdir lock.", self.path, e)
            return
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if left:
            # The OS freed the lock when its holder died, but the holder never cleaned up.
            logging.warning(
                "Taking over the lock %s left by %s, which no longer runs.",
                self.path,
                _describe_holder(left),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        # Written in place, not atomically: the locked descriptor itself is the lock.
        os.pwrite(fd, jsonio.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file (so the next run sees a clean hand-over) and unlocks it."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
