"""Train/validation splits by id, deterministic from the config (SPEC sections 5 and 6).

Neighbouring figshare ids are mostly slices of one patient and patient ids are not published, so the
default split keeps contiguous id blocks together (``split_method="blocked"``). ``"random"``
reproduces the paper's per-slice split and leaks patients between training and validation
(neighbouring slices of one tumour land on both sides), which inflates every validation metric; use
it only to compare with the paper.

Subset selection (``config.data.subset_size`` > 0, the paper used 500) happens first:

- ``blocked`` and ``kfold``: per tumour type, proportionally to the type's count (largest
  remainder), as contiguous blocks: the type's sorted ids are cut into up to 10 equal segments and a
  run of consecutive ids is taken from each segment, at an offset drawn from ``config.seed``. The
  subset thus spans each type's whole id range while keeping slices of a patient together.
- ``random``: a uniform random subset of slices, drawn from ``config.seed`` (as the paper presumably
  did).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bts_jax.data.sources import Example, get_examples, id_sort_key

SPLITS = ("train", "validation")
SPLIT_FILE = "data_split.json"
_SUBSET_SEGMENTS = 10


def _rng(config: Any, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(config.seed), purpose])


def _by_type(examples: Sequence[Example]) -> dict[int, list[Example]]:
    groups: dict[int, list[Example]] = {}
    for ex in sorted(examples, key=lambda e: id_sort_key(e.id)):
        groups.setdefault(ex.label, []).append(ex)
    return dict(sorted(groups.items()))


def _proportional(counts: Sequence[int], total: int) -> list[int]:
    """Splits ``total`` over groups proportionally to ``counts`` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * total / counts.sum()
    alloc = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[: total - alloc.sum()]] += 1
    return np.minimum(alloc, counts).tolist()


def _select_subset(examples: Sequence[Example], config: Any) -> list[Example]:
    size = int(config.data.subset_size)
    if size <= 0 or size >= len(examples):
        return list(examples)
    rng = _rng(config, 1)
    if config.data.split_method == "random":
        chosen = rng.choice(len(examples), size, replace=False)
        return [examples[i] for i in sorted(chosen)]
    groups = _by_type(examples)
    subset = []
    for group, take in zip(
        groups.values(), _proportional([len(g) for g in groups.values()], size), strict=True
    ):
        segments = np.array_split(np.arange(len(group)), min(_SUBSET_SEGMENTS, max(take, 1)))
        takes = [len(s) for s in np.array_split(np.arange(take), len(segments))]
        for segment, n in zip(segments, takes, strict=True):
            start = segment[0] + int(rng.integers(0, len(segment) - n + 1))
            subset.extend(group[start : start + n])
    return subset


def _validation_count(n: int, fraction: float) -> int:
    n_val = int(round(fraction * n))
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return n_val


def split_examples(
    config: Any, examples: Sequence[Example] | None = None
) -> dict[str, list[Example]]:
    """Splits the source's examples into "train" and "validation" (see the module docstring).

    - ``blocked``: per tumour type, ids sorted; validation = the last ``val_fraction`` of the type's
      ids (at least one, at most all but one), training = the ids before them, minus ``split_gap``
      ids next to the validation block.
    - ``random``: per slice, a seed permutation of all ids; validation = its first ``val_fraction``.
      ``split_gap`` does not apply. Leaks patients.
    - ``kfold``: per tumour type, the sorted ids cut into ``num_folds`` contiguous, near-equal
      blocks; validation = block ``fold``; training = the other blocks minus ``split_gap`` ids on
      each side of it.

    Args:
      config: the experiment config (reads ``seed`` and ``data.*``).
      examples: the source's examples; default: `get_examples` of ``config.data`` (listing, no
        validation).

    Returns:
      {"train": [...], "validation": [...]}, each sorted by id.
    """
    data = config.data
    if examples is None:
        examples = get_examples(data, validate=False)
    examples = _select_subset(list(examples), config)
    method = data.split_method
    gap = int(data.split_gap)
    if gap < 0:
        raise ValueError(f"config.data.split_gap must be >= 0, got {gap}.")
    train: list[Example] = []
    val: list[Example] = []
    if method in ("blocked", "random"):
        fraction = float(data.val_fraction)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"config.data.val_fraction must be in (0, 1), got {fraction}.")
        if method == "blocked":
            for group in _by_type(examples).values():
                n_val = _validation_count(len(group), fraction)
                val.extend(group[len(group) - n_val :])
                train.extend(group[: max(len(group) - n_val - gap, 0)])
        else:
            order = _rng(config, 2).permutation(len(examples))
            n_val = _validation_count(len(examples), fraction)
            val = [examples[i] for i in order[:n_val]]
            train = [examples[i] for i in order[n_val:]]
    elif method == "kfold":
        folds, fold = int(data.num_folds), int(data.fold)
        if folds < 2:
            raise ValueError(f"config.data.num_folds must be >= 2, got {folds}.")
        if not 0 <= fold < folds:
            raise ValueError(f"config.data.fold must be in [0, {folds}), got {fold}.")
        for group in _by_type(examples).values():
            blocks = np.array_split(np.arange(len(group)), folds)
            block = blocks[fold]
            if len(block) == 0:
                train.extend(group)
                continue
            lo, hi = int(block[0]), int(block[-1]) + 1
            val.extend(group[lo:hi])
            train.extend(group[: max(lo - gap, 0)] + group[hi + gap :])
    else:
        raise ValueError(
            f'config.data.split_method must be "blocked", "random" or "kfold", got {method!r}.'
        )

    def key(e):
        return id_sort_key(e.id)

    return {"train": sorted(train, key=key), "validation": sorted(val, key=key)}


def get_split_ids(config: Any) -> dict[str, list[str]]:
    """The ids of each split, deterministic from ``config.seed`` and ``config.data``.

    Args:
      config: the experiment config.

    Returns:
      {"train": [ids], "validation": [ids]}, each sorted (numeric ids numerically).
    """
    return {name: [e.id for e in exs] for name, exs in split_examples(config).items()}


def write_split_file(config: Any, workdir: str | os.PathLike) -> str:
    """Writes the split's ids (and the settings that made it) to ``<workdir>/data_split.json``.

    The file lets a run be audited (which slices were validated on) and repeated.

    Args:
      config: the experiment config.
      workdir: the run's folder (created if missing).

    Returns:
      The path of the written file.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(os.fspath(workdir), SPLIT_FILE)
    data = config.data
    content = {
        "settings": {
            "seed": int(config.seed),
            "source": data.source,
            "data_dir": data.data_dir,
            "split_method": data.split_method,
            "val_fraction": float(data.val_fraction),
            "split_gap": int(data.split_gap),
            "num_folds": int(data.num_folds),
            "fold": int(data.fold),
            "subset_size": int(data.subset_size),
        },
        **get_split_ids(config),
    }
    with open(path, "w") as f:
        json.dump(content, f, indent=1)
    return path
