"""Train / validation / test splits by id, deterministic from the config (docs/design.md 5-7).

Neighbouring figshare ids are mostly slices of one patient and patient ids are not published, so
splits keep contiguous id blocks together. Per tumour type, ids sorted, a type's ids are laid out

    [ train | gap | validation | gap | test ]

- **test**: the last ``config.data.test_fraction`` of the type's ids. It depends on the data (and on
  ``test_fraction``) only, not on the seed, fold or split method, so every variant of an ablation is
  scored on the same images. ``test_fraction=0`` gives no test split (an empty list), e.g. for the
  paper's 80/20 protocol; the train and validation splits are then exactly those of the two-way
  split this module made before the test split existed.
- **validation / train** over the ids before the test block (minus ``split_gap`` ids next to it):
  - ``split_method="blocked"`` (default): validation = the last ``val_fraction`` block, train = the
    ids before it minus ``split_gap`` ids.
  - ``"random"``: the paper's per-slice split, a seed permutation of the remaining slices. It leaks
    patients between training and validation (neighbouring slices of one tumour land on both
    sides), which inflates every validation metric; use it only to compare with the paper. The
    test block stays the fixed block, so test metrics are not inflated.
  - ``"kfold"``: the remaining ids cut into ``num_folds`` contiguous blocks; validation = block
    ``fold``, train = the other blocks minus ``split_gap`` ids on each side of it.

``val_fraction`` and ``test_fraction`` are both fractions of the type's ids (of all slices for the
random validation split). A block of a type with at least 2 ids holds at least one id.

Subset selection (``config.data.subset_size`` > 0, the paper used 500) happens first, and the test
block is then taken from within the subset (so with a subset it depends on the seed too):

- ``blocked`` and ``kfold``: per tumour type, proportionally to the type's count (largest
  remainder), as contiguous blocks: the type's sorted ids are cut into up to 10 equal segments and a
  run of consecutive ids is taken from each segment, at an offset drawn from ``config.seed``. The
  subset thus spans each type's whole id range while keeping slices of a patient together.
- ``random``: a uniform random subset of slices, drawn from ``config.seed`` (as the paper presumably
  did).

Configs written before the test split existed have no ``data.test_fraction``; it reads as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from bts_jax.data.examples import get_examples
from bts_jax.data.sources import (
    SAMPLE_DIRS,
    UNKNOWN_LABEL,
    Example,
    id_sort_key,
    list_folder,
)

SPLITS = ("train", "validation", "test")
# The ``config.data`` fields that decide which images a split holds: two runs that differ in one of
# them were validated or tested on different images (with ``subset_size`` > 0 or
# ``split_method="random"``, ``config.seed`` decides too).
SPLIT_SETTINGS = (
    "source",
    "data_dir",
    "split_method",
    "val_fraction",
    "test_fraction",
    "split_gap",
    "num_folds",
    "fold",
    "subset_size",
)
_SUBSET_SEGMENTS = 10


def _rng(config: Any, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(config.seed), purpose])


def _test_fraction(data: Any) -> float:
    # Configs saved before the test split existed hold no test_fraction: they had no test split.
    return float(data.get("test_fraction", 0.0))


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


def _block_size(n: int, fraction: float, available: int) -> int:
    """Ids in a ``fraction`` block of ``n`` ids, cut from the ``available`` ids not yet assigned.

    ``round(fraction * n)``, kept within [1, available - 1] when ``available`` >= 2, so the block is
    never empty and one id is left for training.
    """
    size = int(round(fraction * n))
    if available >= 2:
        size = min(max(size, 1), available - 1)
    return min(size, available)


def _check_fractions(data: Any) -> tuple[float, float]:
    """Returns (val_fraction, test_fraction) after checking their ranges."""
    val, test = float(data.val_fraction), _test_fraction(data)
    if not 0.0 <= test < 1.0:
        raise ValueError(f"config.data.test_fraction must be in [0, 1), got {test}.")
    if data.split_method in ("blocked", "random"):
        # The validation split selects checkpoints, so it may not be empty.
        if not 0.0 < val < 1.0:
            raise ValueError(f"config.data.val_fraction must be in (0, 1), got {val}.")
        if val + test >= 1.0:
            raise ValueError(
                f"config.data.val_fraction + config.data.test_fraction must be < 1 (training needs "
                f"the rest), got {val} + {test}."
            )
    return val, test


def _split_off_test(
    group: list[Example], test_fraction: float, gap: int
) -> tuple[list[Example], list[Example]]:
    """Splits one type's sorted ids into (ids before the test block minus the gap, test block)."""
    if test_fraction <= 0.0:
        return group, []
    n_test = _block_size(len(group), test_fraction, len(group))
    start = len(group) - n_test
    return group[: max(start - gap, 0)], group[start:]


def _check_training_left(train: Sequence[Example], examples: Sequence[Example], method: str):
    """Raises if a tumour type (any type, for the per-slice split) has no training id left."""
    settings = (
        "config.data.val_fraction, config.data.test_fraction, config.data.split_gap, "
        "config.data.num_folds or config.data.subset_size"
    )
    if method == "random":
        if examples and not train:
            raise ValueError(f"The training split is empty; lower {settings}.")
        return
    counts = {label: len(group) for label, group in _by_type(examples).items()}
    trained = {e.label for e in train}
    for label, n in counts.items():
        if label not in trained:
            raise ValueError(
                f"Tumour type {label} ({n} ids) has no training id left; lower {settings}."
            )


def split_examples(
    config: Any, examples: Sequence[Example] | None = None
) -> dict[str, list[Example]]:
    """Splits the source's examples into "train", "validation" and "test" (see the module doc).

    Per tumour type, ids sorted: test = the last ``test_fraction`` of the type's ids (none when it
    is 0), then ``split_gap`` ids dropped, then

    - ``blocked``: validation = the last ``val_fraction`` of the type's ids before that, training =
      the ids before validation, minus ``split_gap`` ids next to it.
    - ``random``: per slice, a seed permutation of all remaining slices; validation = its first
      ``val_fraction`` (of all slices). ``split_gap`` does not apply between them. Leaks patients.
    - ``kfold``: the remaining ids cut into ``num_folds`` contiguous, near-equal blocks; validation
      = block ``fold``; training = the other blocks minus ``split_gap`` ids on each side of it.

    Args:
      config: the experiment config (reads ``seed`` and ``data.*``).
      examples: the source's examples; default: `get_examples` of ``config.data`` (listing, no
        validation).

    Returns:
      {"train": [...], "validation": [...], "test": [...]}, each sorted by id.

    Raises:
      ValueError: naming the ``config.data`` field that is out of range, or the fields to lower
        when a tumour type would keep no training id.
    """
    data = config.data
    if examples is None:
        examples = get_examples(data, validate=False)
    examples = _select_subset(list(examples), config)
    method = data.split_method
    if method not in ("blocked", "random", "kfold"):
        raise ValueError(
            f'config.data.split_method must be "blocked", "random" or "kfold", got {method!r}.'
        )
    gap = int(data.split_gap)
    if gap < 0:
        raise ValueError(f"config.data.split_gap must be >= 0, got {gap}.")
    val_fraction, test_fraction = _check_fractions(data)
    train: list[Example] = []
    val: list[Example] = []
    test: list[Example] = []
    rest_by_type = []
    for group in _by_type(examples).values():
        rest, test_block = _split_off_test(group, test_fraction, gap)
        test.extend(test_block)
        rest_by_type.append((len(group), rest))
    if method == "blocked":
        for n, rest in rest_by_type:
            n_val = _block_size(n, val_fraction, len(rest))
            val.extend(rest[len(rest) - n_val :])
            train.extend(rest[: max(len(rest) - n_val - gap, 0)])
    elif method == "random":
        # The permutation runs over the slices in the source's order (as before the test split
        # existed), so test_fraction=0 reproduces the old split exactly.
        kept = {e.id for _, rest in rest_by_type for e in rest}
        rest = [e for e in examples if e.id in kept]
        order = _rng(config, 2).permutation(len(rest))
        n_val = _block_size(len(examples), val_fraction, len(rest))
        val = [rest[i] for i in order[:n_val]]
        train = [rest[i] for i in order[n_val:]]
    else:
        folds, fold = int(data.num_folds), int(data.fold)
        if folds < 2:
            raise ValueError(f"config.data.num_folds must be >= 2, got {folds}.")
        if not 0 <= fold < folds:
            raise ValueError(f"config.data.fold must be in [0, {folds}), got {fold}.")
        for _, rest in rest_by_type:
            block = np.array_split(np.arange(len(rest)), folds)[fold]
            if len(block) == 0:
                train.extend(rest)
                continue
            lo, hi = int(block[0]), int(block[-1]) + 1
            val.extend(rest[lo:hi])
            train.extend(rest[: max(lo - gap, 0)] + rest[hi + gap :])
    _check_training_left(train, examples, method)

    def key(e):
        return id_sort_key(e.id)

    return {
        "train": sorted(train, key=key),
        "validation": sorted(val, key=key),
        "test": sorted(test, key=key),
    }


def get_split_ids(config: Any) -> dict[str, list[str]]:
    """The ids of each split, deterministic from ``config.seed`` and ``config.data``.

    Args:
      config: the experiment config.

    Returns:
      {"train": [ids], "validation": [ids], "test": [ids]}, each sorted (numeric ids
      numerically); "test" is empty when ``config.data.test_fraction`` is 0.
    """
    return {name: [e.id for e in exs] for name, exs in split_examples(config).items()}


def split_record(config: Any) -> dict[str, Any]:
    """What ``data_split.json`` records of a run's split: its settings and the ids of each split.

    The record lets a run be audited (which slices were validated and tested on) and repeated.

    Args:
      config: the experiment config.

    Returns:
      ``{"settings": {...}, "train": [ids], "validation": [ids], "test": [ids]}``; the settings
      are ``seed`` and the `SPLIT_SETTINGS` fields of ``config.data``.
    """
    data = config.data
    settings = {
        "seed": int(config.seed),
        "source": data.source,
        "data_dir": data.data_dir,
        "split_method": data.split_method,
        "val_fraction": float(data.val_fraction),
        "test_fraction": _test_fraction(data),
        "split_gap": int(data.split_gap),
        "num_folds": int(data.num_folds),
        "fold": int(data.fold),
        "subset_size": int(data.subset_size),
    }
    return {"settings": settings, **get_split_ids(config)}


def heldout_block(data_dir: str, fraction: float) -> list[Example]:
    """Patients that no bundled sample holds: per tumour type, the last ids of a labelled folder.

    The last ``fraction`` of each tumour type's ids in ascending order (the blocked split's
    validation block), minus every id of a bundled sample (`bts_jax.data.sources.SAMPLE_DIRS`).
    ``tools/make_sample_128.py`` bundles only ids before those blocks, so a model trained on the
    bundled samples never saw these patients (consecutive ids are mostly slices of one patient).

    Args:
      data_dir: a folder in the Kaggle layout with ``metadata.csv`` (tumour types).
      fraction: share of each type's last ids, in (0, 1).

    Returns:
      The examples, sorted by id.

    Raises:
      ValueError: a fraction outside (0, 1), or a folder without tumour types (the blocks are
        per type); both named.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The held-out fraction {fraction} must lie in (0, 1).")
    examples = list_folder(data_dir, "the held-out folder")
    if all(e.label == UNKNOWN_LABEL for e in examples):
        raise ValueError(f"{data_dir} has no metadata.csv with tumour types (label column).")
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "data": {
                "split_method": "blocked",
                "val_fraction": fraction,
                "split_gap": 0,
                "num_folds": 5,
                "fold": 0,
                "subset_size": 0,
            },
        }
    )
    bundled = {e.id for folder in SAMPLE_DIRS.values() for e in list_folder(folder)}
    return [e for e in split_examples(config, examples)["validation"] if e.id not in bundled]
