"""A cache the run owns: validated folders and decoded pixels, keyed on the files themselves.

A training run reads its folder for the train, validation and test pipelines; checking every file
once per run (not once per pipeline) and decoding the pixels once is what this cache is for. It
lives as long as the object that holds it (a run, a test), never in a module global, and its keys
include every file's size and modification time, so a file rewritten in place is read again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any


def files_signature(paths: Iterable[str | os.PathLike]) -> tuple:
    """Identifies the current content of files without reading them: path, size, mtime.

    Args:
      paths: files (missing ones are recorded as missing, not an error).

    Returns:
      A hashable tuple that changes when any file is added, removed, resized or rewritten.
    """
    signature = []
    for path in map(os.fspath, paths):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            signature.append((path, None, None))
            continue
        signature.append((path, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def folder_signature(folder: str | os.PathLike) -> tuple:
    """`files_signature` of every file under ``folder`` (recursively), in a stable order.

    Args:
      folder: a directory; a missing one has an empty signature.

    Returns:
      A hashable tuple.
    """
    paths = []
    for root, dirs, files in os.walk(os.fspath(folder)):
        dirs.sort()
        paths += [os.path.join(root, name) for name in sorted(files)]
    return files_signature(paths)


class DataCache:
    """A thread-safe map from keys to computed values, owned by whoever creates it.

    Example::

        cache = DataCache()
        examples = cache.get(("validated", folder_signature(d)), lambda: validate(d))

    Attributes:
      max_entries: entries kept before the oldest is dropped (decoded pixels are large).
    """

    def __init__(self, max_entries: int = 8):
        self.max_entries = int(max_entries)
        self._values: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """Returns the value stored under ``key``, computing and storing it on a miss.

        Args:
          key: a hashable key; include a `files_signature` for values derived from files.
          compute: called without arguments on a miss; its exceptions propagate and store nothing.

        Returns:
          The cached or newly computed value.
        """
        with self._lock:
            if key in self._values:
                value = self._values.pop(key)
                self._values[key] = value  # most recently used last
                return value
        value = compute()
        with self._lock:
            self._values[key] = value
            while len(self._values) > self.max_entries:
                self._values.pop(next(iter(self._values)))
        return value
