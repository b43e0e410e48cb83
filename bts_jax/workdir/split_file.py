"""``data_split.json``: the ids a run trained, validated and tested on."""

from __future__ import annotations

import os
from typing import Any

from bts_jax import jsonio
from bts_jax.data import split_record
from bts_jax.workdir.layout import SPLIT_FILE


def write_split_file(config: Any, workdir: str | os.PathLike) -> str:
    """Writes the run's split (`bts_jax.data.split_record`) to ``<workdir>/data_split.json``.

    Keys: ``"settings"`` (``seed`` and the split settings of ``config.data``), ``"train"``,
    ``"validation"`` and ``"test"`` (lists of ids).

    Args:
      config: the experiment config.
      workdir: the run's folder (created if missing).

    Returns:
      The path of the written file.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(os.fspath(workdir), SPLIT_FILE)
    return jsonio.write_text(path, jsonio.dumps(split_record(config), indent=1))


def read_split_file(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``<workdir>/data_split.json``, or None when the run recorded none.

    Args:
      workdir: a run's folder.

    Returns:
      ``{"settings": {...}, "train": [ids], "validation": [ids], "test": [ids]}`` or None.
    """
    path = os.path.join(os.fspath(workdir), SPLIT_FILE)
    return jsonio.read_json(path) if os.path.isfile(path) else None


def recorded_split_ids(workdir: str | os.PathLike, split: str) -> list[str] | None:
    """The ids a run recorded for one split, or None when it recorded no such split.

    Args:
      workdir: a run's folder.
      split: "train", "validation" or "test".

    Returns:
      The ids in recorded order, or None (no file, or no such key in it).
    """
    recorded = read_split_file(workdir)
    if recorded is None or split not in recorded:
        return None
    return list(recorded[split])
