"""How a split divides over hosts, batches and steps, the same on every host.

Every host yields the same number of batches (collectives would hang otherwise): `steps_per_epoch`
is ``floor(min shard size / local batch)`` for training; evaluation yields ``ceil(split size /
global batch)`` batches on every host (`num_eval_batches`), padded with ``valid=False`` entries so
each image is counted exactly once. Each host's shard of a split is fixed: the split's ids,
permuted once from the seed, then every ``process_count``-th one from position ``process_index``
(`host_shard`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bts_jax.data.examples import get_examples
from bts_jax.data.sources import Example
from bts_jax.data.splits import SPLITS, split_examples


def check_process(process_index: int, process_count: int) -> None:
    """Refuses a process index outside ``[0, process_count)``."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")


def local_batch_size(config: Any, split: str, process_count: int) -> int:
    """The host-local batch of a split: the global batch divided evenly over the hosts.

    Args:
      config: the experiment config (``batch_size`` for "train", ``eval_batch_size`` otherwise).
      split: a split name.
      process_count: the number of hosts.

    Returns:
      ``global batch // process_count``.

    Raises:
      ValueError: unknown split, or a global batch the hosts cannot share evenly (names the field).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    name = "config.batch_size" if split == "train" else "config.eval_batch_size"
    batch = int(config.batch_size if split == "train" else config.eval_batch_size)
    if batch <= 0 or batch % process_count:
        raise ValueError(
            f"{name}={batch} must be a positive multiple of the process count ({process_count}): "
            f"each host loads {name} / process_count examples."
        )
    return batch // process_count


def host_shard(
    examples: Sequence[Example], seed: int, process_index: int, process_count: int
) -> np.ndarray:
    """Positions (into the sorted split) of this host's examples; fixed for the whole run.

    Args:
      examples: the split, sorted.
      seed: ``config.seed``.
      process_index: this host.
      process_count: the number of hosts.

    Returns:
      int positions into ``examples``.
    """
    order = np.random.default_rng([int(seed), 3]).permutation(len(examples))
    return order[process_index::process_count]


def train_steps(n_train: int, global_batch: int, process_count: int) -> int:
    """Steps per epoch of a training split of ``n_train`` examples (see `steps_per_epoch`).

    Raises:
      ValueError: fewer examples than one batch per host (names ``config.batch_size``).
    """
    local = global_batch // process_count
    steps = (n_train // process_count) // local if local > 0 else 0
    if steps == 0:
        raise ValueError(
            f"The training split has {n_train} examples, fewer than one batch per host "
            f"(config.batch_size={global_batch} over {process_count} process(es)); lower "
            "config.batch_size or use more data."
        )
    return steps


def steps_per_epoch(config: Any, *, process_count: int) -> int:
    """Training steps (batches) per epoch, the same on every host.

    ``floor(min host shard size / (config.batch_size / process_count))``: every host stops when the
    smallest shard runs out, so all hosts run the same number of steps.

    Args:
      config: the experiment config.
      process_count: number of hosts.

    Returns:
      The number of steps (>= 1).

    Raises:
      ValueError: the training split has fewer examples than one batch.
    """
    n = len(split_examples(config, get_examples(config.data, validate=False))["train"])
    return train_steps(n, int(config.batch_size), process_count)


def num_eval_batches(config: Any, split: str = "validation", *, num_examples: int | None = None):
    """Batches yielded by an evaluation pass over ``split``, the same on every host.

    ``ceil(split size / config.eval_batch_size)`` (the same for any process count: each host's shard
    fits in that many host-local batches, and hosts that run out yield padding batches).

    Args:
      config: the experiment config.
      split: an evaluation split ("validation", "test", or "train" without augmentation).
      num_examples: the split's size when the caller knows it; listed from the source otherwise.

    Returns:
      The number of batches.
    """
    if num_examples is None:
        num_examples = len(split_examples(config, get_examples(config.data, validate=False))[split])
    return math.ceil(num_examples / int(config.eval_batch_size))
