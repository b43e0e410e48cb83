"""A sweep's finished cells read back from its folder: configs, test metrics, per-image rows.

`export_results` copies what the report reads of every finished cell, without its checkpoints, to
another folder: a sweep's results to keep beside a paper or in a repository (kilobytes a cell
instead of megabytes), which ``report.py`` reads and ``sweep.py`` continues like the original.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from bts_jax import jsonio
from bts_jax.evaluation import PER_IMAGE_COLUMNS
from bts_jax.experiments.sweeps import (
    CELL_FILE,
    CODE_CHECKS_FILE,
    REPRODUCIBILITY_FILE,
    SWEEP_FILE,
    SweepDefinition,
    cell_dir,
    load_sweep,
    read_cell_status,
)
from bts_jax.workdir.environment import read_environment
from bts_jax.workdir.layout import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    METRICS_JSONL,
    SPLIT_FILE,
    eval_file,
    per_image_file,
)

# The files of a finished cell that the report reads, for a sweep scored on the cells' own
# test split; a sweep with a test folder reads eval_external_test.json and its CSV instead.
EVAL_FILE = eval_file("test")
PER_IMAGE_FILE = per_image_file("test")


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished cell: one (variant, seed, fold) training run and its test results.

    Attributes:
      variant: the variant's name.
      seed: the run's seed.
      fold: the run's fold, or None without folds.
      path: the cell folder.
      config: the run's full config (``config.json``).
      test: test metrics (``eval_test.json``; null read as NaN).
      per_image: column -> (num_images,) array of ``per_image_test.csv`` (``"id"`` and
        ``"tumour_type"`` as strings, the others float, empty read as NaN).
      history: the per-epoch records of ``metrics.jsonl``.
      wall_s: the run's wall-clock seconds (``cell.json``).
      environment: the last record of its ``environment.json`` (None for runs without one).
      test_data: the fingerprint of the external test images it was scored on
        (`bts_jax.experiments.cells.test_data_fingerprint`; None without a test folder, or for
        cells scored before it was recorded).
    """

    variant: str
    seed: int
    fold: int | None
    path: str
    config: dict[str, Any]
    test: dict[str, float]
    per_image: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    wall_s: float
    environment: dict[str, Any] | None = None
    test_data: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The cell's name, as ``sweep.py --list`` prints it: ``"unet/seed_0"``."""
        return f"{self.variant}/seed_{self.seed}" + (
            "" if self.fold is None else f"/fold_{self.fold}"
        )

    @property
    def key(self) -> tuple[int, int | None]:
        """(seed, fold): what pairs runs of two variants."""
        return (self.seed, self.fold)


@dataclasses.dataclass(frozen=True)
class MissingCell:
    """A cell that is not (or not completely) finished.

    Attributes:
      variant: the variant's name.
      seed: the cell's seed.
      fold: the cell's fold, or None.
      path: the cell folder.
      reason: why it is not used, e.g. "no cell.json" or "status 'running'".
    """

    variant: str
    seed: int
    fold: int | None
    path: str
    reason: str


def _float(value: Any) -> float:
    return math.nan if value is None or value == "" else float(value)


def read_per_image(path: str) -> dict[str, np.ndarray]:
    """Reads a ``per_image_test.csv`` into columns.

    Args:
      path: the CSV file; header `bts_jax.evaluation.PER_IMAGE_COLUMNS` (extra columns are kept).

    Returns:
      column -> (num_images,) array: ``id`` and ``tumour_type`` as str, the others float64 with
      empty, "nan" or missing values as NaN.

    Raises:
      ValueError: a required column is missing (the message names the file).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PER_IMAGE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}.")
        rows = list(reader)
    columns = {}
    for name in reader.fieldnames:
        values = [row[name] for row in rows]
        if name in ("id", "tumour_type"):
            columns[name] = np.array(values, dtype=str)
        else:
            columns[name] = np.array([_float(v) for v in values], dtype=np.float64)
    return columns


def _load_cell(path: str, test_split: str) -> tuple[dict[str, Any] | None, str]:
    """The cell's files, or None and the reason it cannot be used."""
    eval_name, per_image_name = eval_file(test_split), per_image_file(test_split)
    if not os.path.isdir(path):
        return None, "no cell folder"
    status = read_cell_status(path)
    if status is None:
        return None, f"no {CELL_FILE}"
    if status.get("status") != "done":
        return None, f"status {status.get('status')!r}"
    for name in (CONFIG_FILE, eval_name, per_image_name, METRICS_JSONL):
        if not os.path.isfile(os.path.join(path, name)):
            return None, f"done but {name} is missing"
    config = jsonio.read_json(os.path.join(path, CONFIG_FILE))
    evaluated = jsonio.read_json(os.path.join(path, eval_name))
    # Numbers (null read as NaN); the strings and the fingerprint say where the images came from.
    test = {k: _float(v) for k, v in evaluated.items() if v is None or isinstance(v, int | float)}
    files = {
        "config": config,
        "test": test,
        "per_image": read_per_image(os.path.join(path, per_image_name)),
        "history": jsonio.read_jsonl(os.path.join(path, METRICS_JSONL)),
        "wall_s": _float(status.get("wall_s")),
        "environment": (read_environment(path) or [None])[-1],
        "test_data": evaluated.get("test_data"),
    }
    return files, ""


def load_runs(sweep: SweepDefinition, directory: str) -> tuple[list[Run], list[MissingCell]]:
    """Loads every finished cell of a sweep and lists the others.

    Args:
      sweep: the loaded ``sweep.json``.
      directory: the sweep folder.

    Returns:
      (runs, missing), both in (variant, fold, seed) order.
    """
    runs, missing = [], []
    for variant in sweep.variants:
        for fold in sweep.folds or (None,):
            for seed in sweep.seeds_of(variant):
                path = cell_dir(directory, variant, seed, fold)
                files, reason = _load_cell(path, sweep.test_split)
                if files is None:
                    missing.append(MissingCell(variant, seed, fold, path, reason))
                else:
                    runs.append(Run(variant, seed, fold, path, **files))
    return runs, missing


def split_protocol(runs: Sequence[Run]) -> dict[str, Any]:
    """The data split the runs used (read from their config.json), and whether they agree."""
    settings = set()
    for run in runs:
        data = run.config.get("data", {})
        settings.add(
            (
                data.get("split_method"),
                data.get("val_fraction"),
                data.get("test_fraction", 0.0),
                data.get("subset_size"),
                data.get("split_gap"),
            )
        )
    names = ("split_method", "val_fraction", "test_fraction", "subset_size", "split_gap")
    protocols = [dict(zip(names, s, strict=True)) for s in sorted(settings, key=str)]
    test_sets = {tuple(sorted(map(str, run.per_image["id"]))) for run in runs}
    return {
        "protocols": protocols,
        "consistent": len(protocols) <= 1,
        "same_test_images": len(test_sets) <= 1,
        "num_test_images": sorted({len(s) for s in test_sets}),
    }


# A finished cell's results without its checkpoints, curves and predictions: what the report reads,
# where the run came from (environment, data split), and what makes `sweep.py` count it as done.
RESULT_FILES = (CELL_FILE, CONFIG_FILE, ENVIRONMENT_FILE, SPLIT_FILE, METRICS_JSONL)
SWEEP_RESULT_FILES = (SWEEP_FILE, REPRODUCIBILITY_FILE, CODE_CHECKS_FILE)


def export_results(directory: str | os.PathLike, destination: str | os.PathLike) -> list[str]:
    """Copies the finished cells' results (no checkpoints) and ``sweep.json`` to ``destination``.

    Each finished cell keeps `RESULT_FILES` and its evaluation files (``eval_*.json``,
    ``per_image_*.csv``), in the same layout. ``report.py DESTINATION`` then writes the same report
    as on the original folder, and ``sweep.py`` on it counts those cells as done and trains the
    rest. Exporting again into the same destination adds the cells finished since.

    Args:
      directory: the sweep folder.
      destination: the folder to copy into (created if needed); it may hold an earlier export of
        the same sweep, not another sweep.

    Returns:
      The names of the exported cells, e.g. ``["unet/seed_0", ...]``.

    Raises:
      FileNotFoundError: ``directory`` is not a sweep folder.
      ValueError: ``destination`` is ``directory``, or holds another sweep's ``sweep.json``.
    """
    directory, destination = os.path.abspath(directory), os.path.abspath(destination)
    sweep = load_sweep(directory)
    if destination == directory:
        raise ValueError(f"Cannot export the sweep {directory} into itself.")
    if os.path.isfile(os.path.join(destination, SWEEP_FILE)):
        other = load_sweep(destination)
        if other.to_json() != sweep.to_json():
            raise ValueError(
                f"{destination} holds another sweep ({other.name!r}, {SWEEP_FILE} differs from "
                f"{directory}'s): export into an empty folder or an export of this sweep."
            )
    runs, _ = load_runs(sweep, directory)
    for run in runs:
        target = os.path.join(destination, os.path.relpath(run.path, directory))
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(run.path)):
            evaluation = name.startswith("eval_") or name.startswith("per_image_")
            if name in RESULT_FILES or evaluation:
                shutil.copy2(os.path.join(run.path, name), os.path.join(target, name))
    for name in SWEEP_RESULT_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            shutil.copy2(os.path.join(directory, name), os.path.join(destination, name))
    return [run.name for run in runs]
