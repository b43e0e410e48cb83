"""One cell of a sweep: its state, its score on the sweep's test folder, a rerun to check it.

A cell is an ordinary training run (`bts_jax.train.train_and_evaluate`) in its own folder. Its
state tells a scheduler what is left (`cell_state`); a sweep with a ``test_folder`` scores every
finished cell on it, each image at its own size (`score_on_test_folder`, written as
``eval_external_test.json`` and ``per_image_external_test.csv``); `reproduce` trains one cell again
from scratch and names whatever differs from the first run, bit for bit.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bts_jax import data as data_lib
from bts_jax import jsonio
from bts_jax import workdir as workdir_lib
from bts_jax.data import splits
from bts_jax.experiments.sweeps import (
    EXTERNAL_TEST,
    REPRODUCIBILITY_FILE,
    Cell,
    SweepDefinition,
    read_cell_status,
)
from bts_jax.workdir.environment import data_fingerprint
from bts_jax.workdir.layout import METRICS_JSONL, eval_file, per_image_file

# Cell states, as `cell_state` gives them and ``sweep.py --list`` prints them.
DONE, RUNNING, STARTED, NEW = "done", "running", "started", "new"
UNSCORED = "trained, not yet scored on the test folder"
REPRODUCE_DIR = ".reproduce"


def is_scored(cell: Cell, definition: SweepDefinition) -> bool:
    """Whether a cell holds its score on the sweep's test folder (always, without one)."""
    if not definition.test_folder:
        return True
    return os.path.isfile(os.path.join(cell.workdir, eval_file(EXTERNAL_TEST)))


def cell_state(cell: Cell, definition: SweepDefinition) -> str:
    """Where a cell stands: done, running (a live process holds it), started, new, or unscored.

    Args:
      cell: the cell.
      definition: its sweep (whether it has a test folder).

    Returns:
      One of `DONE`, `RUNNING` (with the holder, e.g. "running (process 12 on host h, ...)"),
      `STARTED` (checkpoints, no live process), `NEW`, `UNSCORED`.
    """
    holder = workdir_lib.lock_holder(cell.workdir)
    if holder is not None:
        return f"{RUNNING} ({holder})"
    status = read_cell_status(cell.workdir)
    if status is not None and status.get("status") == "done":
        return DONE if is_scored(cell, definition) else UNSCORED
    if workdir_lib.latest_saved_step(cell.workdir) is not None:
        return STARTED
    return NEW


def test_examples(definition: SweepDefinition) -> list[data_lib.Example] | None:
    """The images of the sweep's test folder (its held-out block, if set), or None without one.

    Raises:
      FileNotFoundError, ValueError: a missing or broken folder, named.
    """
    if not definition.test_folder:
        return None
    if definition.test_heldout_fraction:
        return splits.heldout_block(definition.test_folder, definition.test_heldout_fraction)
    folder = {"source": "folder", "data_dir": definition.test_folder, "strict_masks": False}
    return list(data_lib.get_examples(folder, validate=True))


def test_data_fingerprint(examples: Sequence[data_lib.Example]) -> dict[str, Any]:
    """The test images' fingerprint: ``{"examples", "bytes", "sha256"}`` of their ids, names, sizes.

    The same fingerprint `bts_jax.workdir.environment` records of a run's own splits, so a report
    can tell whether every cell was scored on the same files (and whether the folder changed since).
    """
    return data_fingerprint({EXTERNAL_TEST: examples})[EXTERNAL_TEST]


def score_on_test_folder(
    cell: Cell, definition: SweepDefinition, examples: Sequence[data_lib.Example]
) -> str:
    """Scores a cell's best checkpoint on the test folder's images, each at its own size.

    Writes ``eval_external_test.json`` (the metrics of `bts_jax.inference.scoring
    .score_examples`, as ``evaluate.py --data_dir`` scores a folder: the checkpoint's step, where
    the images came from and their `test_data_fingerprint` as ``test_data``) and
    ``per_image_external_test.csv`` into the cell.

    Args:
      cell: a trained cell.
      definition: its sweep.
      examples: `test_examples` of the sweep.

    Returns:
      The JSON file's path.
    """
    from bts_jax.inference.scoring import score_examples

    record = {
        "test_folder": os.path.abspath(definition.test_folder),
        "test_heldout_fraction": definition.test_heldout_fraction,
        "test_data": test_data_fingerprint(examples),
    }
    _, path = score_examples(
        cell.workdir, examples, cell.workdir, EXTERNAL_TEST, batch_size=16, record=record
    )
    return path


# ----------------------------------------------------------------------------- reproducibility


def _metric_rows(workdir: str) -> list[dict[str, Any]]:
    # The measured fields (throughput, seconds) differ between any two runs; no other value may.
    return workdir_lib.without_measured(workdir_lib.read_metrics(workdir))


def _variables(workdir: str, which: str) -> dict[str, Any]:
    _, _, variables = workdir_lib.load_trained_model(workdir, which)
    return jax.device_get(variables)


def compare_runs(a: str, b: str, splits_scored: Sequence[str]) -> tuple[list[str], list[str]]:
    """What differs between two runs of one config: parameters, metrics, evaluation files.

    Args:
      a: the first run's folder.
      b: the second's.
      splits_scored: the evaluations to compare (their ``eval_*.json`` and ``per_image_*.csv``).

    Returns:
      ``(compared, differences)``: what was compared, and a line per difference (empty when the
      runs are bit-identical).
    """
    compared, differences = [], []
    for which in ("best", "latest"):
        compared.append(f"{which} checkpoint: params and batch_stats")
        left, right = _variables(a, which), _variables(b, which)
        for path, x in jax.tree_util.tree_leaves_with_path(left):
            y = right
            for key in path:
                y = y[key.key]
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                name = "/".join(str(k.key) for k in path)
                diff = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                differences.append(f"{which} checkpoint {name}: max |difference| {diff:.3g}")
    compared.append(f"{METRICS_JSONL} (but {', '.join(workdir_lib.MEASURED_FIELDS)})")
    if _metric_rows(a) != _metric_rows(b):
        differences.append(f"{METRICS_JSONL} differs")
    for split in splits_scored:
        for name in (eval_file(split), per_image_file(split)):
            if os.path.isfile(os.path.join(a, name)):
                compared.append(name)
                other = os.path.join(b, name)
                same = os.path.isfile(other) and filecmp.cmp(
                    os.path.join(a, name), other, shallow=False
                )
                if not same:
                    differences.append(f"{name} differs")
    return compared, differences


def reproduce(
    cell: Cell,
    config: ml_collections.ConfigDict,
    definition: SweepDefinition,
    directory: str,
    train_fn: Callable[..., Any],
) -> dict[str, Any]:
    """Trains a finished cell again from scratch and says whether the rerun is bit-identical.

    The rerun goes to ``DIR/.reproduce/<variant>/seed_<n>`` (replaced if present) on the same
    devices as ``train_fn`` gives it; its parameters (best and latest checkpoints),
    ``metrics.jsonl`` (but the measured images/s) and evaluation files are compared with the
    cell's. The finding is written to ``DIR/reproducibility.json``, which the report shows.

    Args:
      cell: a finished cell.
      config: its config.
      definition: its sweep.
      directory: the sweep folder.
      train_fn: trains one run (`bts_jax.train.train_and_evaluate`'s signature).

    Returns:
      ``{"cell", "identical", "compared", "differences", "rerun"}``.

    Raises:
      ValueError: the cell is not finished.
    """
    if cell_state(cell, definition) != DONE:
        raise ValueError(f"Cell {cell.name} is not finished: train it before reproducing it.")
    rerun = os.path.join(directory, REPRODUCE_DIR, cell.name)
    shutil.rmtree(rerun, ignore_errors=True)
    train_fn(config, rerun, show_progress=False)
    scored = ["validation"] + (["test"] if config.data.get("test_fraction", 0.0) else [])
    examples = test_examples(definition)
    if examples is not None:
        rerun_cell = Cell(cell.variant, cell.seed, cell.fold, rerun)
        score_on_test_folder(rerun_cell, definition, examples)
        scored.append(EXTERNAL_TEST)
    compared, differences = compare_runs(cell.workdir, rerun, scored)
    record = {
        "cell": cell.name,
        "identical": not differences,
        "compared": compared,
        "differences": differences,
        "rerun": rerun,
        "devices": [str(d) for d in jax.devices()],
    }
    jsonio.write_json(os.path.join(directory, REPRODUCIBILITY_FILE), record, indent=1)
    return record


def read_reproducibility(directory: str) -> dict[str, Any] | None:
    """The sweep's ``reproducibility.json`` (see `reproduce`), or None when no cell was rerun."""
    path = os.path.join(directory, REPRODUCIBILITY_FILE)
    return jsonio.read_json(path) if os.path.isfile(path) else None
