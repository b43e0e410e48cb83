"""Strict JSON for every file bts_jax writes: undefined numbers become ``null``, writes are atomic.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON. A metric is NaN when it is
undefined (e.g. precision when nothing is predicted, docs/design.md section 4); ``null`` says the
same and every parser reads it. Files are written whole under a temporary name and renamed, so a
run killed mid-write leaves the previous file, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def strict(value: Any) -> Any:
    """``value`` with non-finite floats as None, numpy scalars as Python numbers, keys as str.

    Args:
      value: nested dicts, lists, tuples and scalars.

    Returns:
      The same structure, which ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if isinstance(value, Mapping):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON text that strict parsers accept (see `strict`).

    Args:
      value: a JSON-serialisable value (floats may be NaN or infinite).
      **kwargs: passed to ``json.dumps`` (e.g. ``indent``, ``sort_keys``).

    Returns:
      The JSON text.
    """
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def write_text(path: str | os.PathLike, text: str) -> str:
    """Writes ``text`` to ``path`` atomically (a temporary file in the same folder, renamed).

    Args:
      path: the file to write.
      text: its whole content.

    Returns:
      ``path`` as a string.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, value: Any, **kwargs: Any) -> str:
    """Writes ``value`` as strict JSON (see `dumps`), atomically, with a final newline.

    Args:
      path: the file to write.
      value: the content.
      **kwargs: passed to ``json.dumps`` (e.g. ``indent=2, sort_keys=True``).

    Returns:
      ``path`` as a string.
    """
    return write_text(path, dumps(value, **kwargs) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> str:
    """Writes one strict JSON value per line, atomically.

    Args:
      path: the file to write.
      rows: the values, in order.

    Returns:
      ``path`` as a string.
    """
    return write_text(path, "".join(dumps(row) + "\n" for row in rows))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path`` (``null`` read as None)."""
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The values of a JSON-lines file, one per non-empty line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
