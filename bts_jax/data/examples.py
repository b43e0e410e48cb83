"""A configured source's examples: a bundled sample, a folder or TFDS records, listed and checked.

Above `sources` (folders and their checks) and `tfds_builder` (the TFDS records), which it picks
between, so imports go one way: `tfds_builder` lists its manual download through `sources`, and
neither imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bts_jax.data.cache import DataCache, folder_signature
from bts_jax.data.sources import (
    SAMPLE_DIRS,
    Example,
    list_folder,
    source_dir,
    validate_examples,
)


def _validated_folder(data_dir: str, setting: str, strict_masks: bool) -> tuple[Example, ...]:
    examples = list_folder(data_dir, setting)
    validate_examples(examples, strict_masks)
    return tuple(examples)


def _tfds_examples(data_dir: str) -> tuple[Example, ...]:
    from bts_jax.data import tfds_builder  # Imported lazily: tensorflow_datasets is slow to import.

    return tuple(tfds_builder.read_examples(data_dir))


def get_examples(
    data_config: Mapping[str, Any], validate: bool = True, cache: DataCache | None = None
) -> tuple[Example, ...]:
    """All pairs of the configured source, sorted by id.

    Args:
      data_config: ``config.data`` (reads ``source``, ``data_dir``, ``strict_masks``).
      validate: check every file of a folder source.
      cache: a run's `DataCache`: the validated listing (or the TFDS records) is kept there, keyed
        on every file's size and modification time, so a run checks its folder once. None reads
        and checks afresh.

    Returns:
      The examples, sorted by `id_sort_key`.

    Raises:
      ValueError, FileNotFoundError: unknown source, or a folder that fails validation.
    """
    source = data_config["source"]
    if source in SAMPLE_DIRS or source == "folder":
        data_dir = source_dir(data_config)
        setting = "config.data.data_dir" if source == "folder" else f"the bundled {source}"
        if not validate:
            return tuple(list_folder(data_dir, setting))
        strict = bool(data_config["strict_masks"])
        if cache is None or not os.path.isdir(data_dir):
            return _validated_folder(data_dir, setting, strict)
        key = ("validated folder", data_dir, strict, folder_signature(data_dir))
        return cache.get(key, lambda: _validated_folder(data_dir, setting, strict))
    if source == "tfds":
        if not data_config["data_dir"]:
            raise ValueError(
                "config.data.source='tfds' needs config.data.data_dir (the TFDS data_dir)."
            )
        data_dir = os.path.abspath(os.path.expanduser(data_config["data_dir"]))
        if cache is None:
            return _tfds_examples(data_dir)
        key = ("tfds", data_dir, folder_signature(data_dir))
        return cache.get(key, lambda: _tfds_examples(data_dir))
    names = ", ".join(f'"{name}"' for name in (*SAMPLE_DIRS, "folder", "tfds"))
    raise ValueError(f"config.data.source must be one of {names}, got {source!r}.")
