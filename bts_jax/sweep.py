"""Sweeps: variants x seeds (x folds) of one base config, each cell an ordinary training run.

A sweep definition (``configs/sweeps/*.py``) names a base experiment config, overrides shared by
every cell, the variants (each a few more overrides), the seeds and optionally the folds. Running
it trains every cell into ``DIR/<variant>/seed_<n>/`` (``DIR/<variant>/fold_<k>/seed_<n>/`` with
folds) with `bts_jax.train_lib.train_and_evaluate`, then writes the report (`bts_jax.report`).

Restartable: a finished cell has ``cell.json`` with ``"status": "done"`` and is skipped; an
interrupted cell resumes from its own checkpoints; a cell whose resolved config differs from the one
it was trained with stops the sweep with the differing fields. On a machine with several devices,
cells run concurrently on disjoint groups of ``devices_per_run`` devices (one thread per group, each
run on its own mesh), as nnU-Net users run one fold per GPU.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import importlib.util
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from bts_jax import checkpointing, report, run_guard
from bts_jax.state import make_mesh

SWEEP_FILE = report.SWEEP_FILE
CELL_FILE = "cell.json"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of a sweep.

    Attributes:
      variant: the variant's name.
      seed: ``config.seed`` of the run.
      fold: ``config.data.fold`` of the run, or None for a sweep without folds.
      workdir: the run's folder.
    """

    variant: str
    seed: int
    fold: int | None
    workdir: str

    @property
    def name(self) -> str:
        """``variant/seed_n`` or ``variant/fold_k/seed_n``."""
        fold = "" if self.fold is None else f"fold_{self.fold}/"
        return f"{self.variant}/{fold}seed_{self.seed}"


def load_python_config(path: str | os.PathLike, repo_root: str | None = None) -> Any:
    """Imports a config file and returns its ``get_config()``.

    Args:
      path: a ``configs/*.py`` file; relative paths are taken from ``repo_root`` when given.
      repo_root: the folder relative paths are taken from (the repository root).

    Returns:
      What the file's ``get_config()`` returns.

    Raises:
      FileNotFoundError: the file does not exist (named).
      ValueError: the file has no ``get_config``.
    """
    path = os.fspath(path)
    if repo_root and not os.path.isabs(path):
        path = os.path.join(repo_root, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_bts_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config() function.")
    return module.get_config()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings into ``{"a.b.c": leaf}`` (tuples and lists are leaves).

    Args:
      tree: a nested dict or ConfigDict.
      prefix: prepended to every key.

    Returns:
      The flat dict, keys in insertion order.
    """
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with flat ``{"field.path": value}`` overrides applied.

    Args:
      config: the base experiment config.
      overrides: flat field paths and values.
      where: the sweep setting the overrides come from, for error messages.

    Returns:
      The new config.

    Raises:
      ValueError: a field that the config does not have, or a value of another type (named).
    """
    config = copy.deepcopy(config)
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        target = config
        for part in parents:
            if part not in target or not isinstance(target[part], ml_collections.ConfigDict):
                raise ValueError(f"{where}: {path!r} is not a field of the base config.")
            target = target[part]
        if leaf not in target:
            raise ValueError(f"{where}: {path!r} is not a field of the base config.")
        try:
            target[leaf] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:
            raise ValueError(f"{where}: {path}={value!r} has the wrong type: {e}") from None
    return config


def _to_flat_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping | ml_collections.ConfigDict):
        raise ValueError(f"{where} must map config fields to values, got {value!r}.")
    return flatten(value)


def _int_tuple(value: Any, where: str, *, allow_none: bool = False) -> tuple[int, ...] | None:
    if value is None and allow_none:
        return None
    values = tuple(value) if isinstance(value, list | tuple) else None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where} must be a non-empty list of integers, got {value!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"{where} has repeated entries: {list(values)}.")
    return values


@dataclasses.dataclass(frozen=True)
class SweepDefinition:
    """A checked sweep definition.

    Attributes:
      name: the sweep's name.
      base_config: the base config file, relative to the repository root.
      overrides: flat overrides applied to every cell.
      variants: variant name -> its flat overrides (applied after ``overrides``).
      baseline: the variant every other is compared with.
      paper_model: the variant the paper's claims are about, or None.
      seeds: the seeds.
      folds: the folds, or None.
      devices_per_run: devices of one cell (0 = all devices, cells one after another).
    """

    name: str
    base_config: str
    overrides: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    baseline: str
    paper_model: str | None
    seeds: tuple[int, ...]
    folds: tuple[int, ...] | None
    devices_per_run: int

    def to_json(self) -> dict[str, Any]:
        """The ``sweep.json`` content (what `bts_jax.report.load_sweep` reads)."""
        return {
            "name": self.name,
            "base_config": self.base_config,
            "overrides": self.overrides,
            "variants": self.variants,
            "baseline": self.baseline,
            "paper_model": self.paper_model,
            "seeds": list(self.seeds),
            "folds": None if self.folds is None else list(self.folds),
        }


def parse_sweep(sweep: ml_collections.ConfigDict) -> SweepDefinition:
    """Checks a sweep config (``configs/sweeps/*.py``); every error names the ``sweep.`` field.

    Args:
      sweep: the sweep's ConfigDict: ``name``, ``base_config``, ``overrides`` (nested fields),
        ``variants`` (name -> nested fields), ``baseline``, ``paper_model`` (or ""), ``seeds``,
        ``folds`` (or empty), ``devices_per_run``.

    Returns:
      The `SweepDefinition`.

    Raises:
      ValueError: a missing or invalid field.
    """
    for field in ("name", "base_config", "variants", "baseline", "seeds"):
        if field not in sweep:
            raise ValueError(f"The sweep config has no sweep.{field}.")
    variants = sweep.variants
    if not isinstance(variants, Mapping | ml_collections.ConfigDict) or not variants:
        raise ValueError("sweep.variants must map at least one variant name to its overrides.")
    for name in variants:
        if not name or "/" in name or name.startswith(("seed_", "fold_", ".")):
            raise ValueError(f"sweep.variants: {name!r} cannot be a folder name of a variant.")
    parsed_variants = {
        name: _to_flat_dict(value, f"sweep.variants.{name}") for name, value in variants.items()
    }
    baseline = sweep.baseline
    if baseline not in parsed_variants:
        raise ValueError(f"sweep.baseline={baseline!r} is not one of {sorted(parsed_variants)}.")
    paper_model = sweep.get("paper_model") or None
    if paper_model is not None and paper_model not in parsed_variants:
        raise ValueError(
            f"sweep.paper_model={paper_model!r} is not one of {sorted(parsed_variants)}."
        )
    folds = sweep.get("folds") or None
    devices_per_run = int(sweep.get("devices_per_run", 0))
    if devices_per_run < 0:
        raise ValueError(f"sweep.devices_per_run={devices_per_run} must be >= 0 (0 = all).")
    return SweepDefinition(
        name=str(sweep.name),
        base_config=str(sweep.base_config),
        overrides=_to_flat_dict(sweep.get("overrides"), "sweep.overrides"),
        variants=parsed_variants,
        baseline=baseline,
        paper_model=paper_model,
        seeds=_int_tuple(list(sweep.seeds), "sweep.seeds"),
        folds=_int_tuple(list(folds), "sweep.folds", allow_none=True) if folds else None,
        devices_per_run=devices_per_run,
    )


def expand_cells(definition: SweepDefinition, directory: str) -> list[Cell]:
    """Every cell of a sweep, variant by variant, then fold, then seed.

    Args:
      definition: the sweep.
      directory: the sweep folder.

    Returns:
      The cells.
    """
    folds = definition.folds if definition.folds is not None else (None,)
    return [
        Cell(variant, seed, fold, report.cell_dir(directory, variant, seed, fold))
        for variant in definition.variants
        for fold in folds
        for seed in definition.seeds
    ]


def cell_config(
    definition: SweepDefinition, base: ml_collections.ConfigDict, cell: Cell
) -> ml_collections.ConfigDict:
    """The full experiment config of one cell: base, shared overrides, variant, seed, fold.

    Args:
      definition: the sweep.
      base: the base config (from ``definition.base_config``).
      cell: the cell.

    Returns:
      The cell's config.
    """
    config = apply_overrides(base, definition.overrides, "sweep.overrides")
    config = apply_overrides(
        config, definition.variants[cell.variant], f"sweep.variants.{cell.variant}"
    )
    config.seed = cell.seed
    if cell.fold is not None:
        config.data.split_method = "kfold"
        config.data.fold = cell.fold
    return config


def check_unchanged(cells: Sequence[Cell], configs: Mapping[str, ml_collections.ConfigDict]):
    """Refuses to continue a sweep whose definition changed under cells already started.

    Args:
      cells: the sweep's cells.
      configs: cell name -> the config the sweep now gives it.

    Raises:
      ValueError: naming the first cell whose saved ``config.json`` differs, and how.
    """
    for cell in cells:
        saved = run_guard.read_saved_config(cell.workdir)
        if saved is None:
            continue
        changes = run_guard.diff_configs(saved, run_guard.flatten_config(configs[cell.name]))
        diff = [f"{c.field}: {c.old!r} -> {c.new!r}" for c in changes]
        if diff:
            raise ValueError(
                f"The sweep definition changed under its existing cell {cell.name} "
                f"({cell.workdir}): "
                + "; ".join(diff[:8])
                + (" ..." if len(diff) > 8 else "")
                + ". Use a new sweep folder, or delete that cell to retrain it."
            )


def is_done(cell: Cell) -> bool:
    """Whether a cell finished (its ``cell.json`` says ``"status": "done"``)."""
    path = os.path.join(cell.workdir, CELL_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("status") == "done"


def device_groups(devices: Sequence[jax.Device], devices_per_run: int) -> list[list[jax.Device]]:
    """Splits the devices into disjoint groups of ``devices_per_run`` (0 = one group of all).

    Args:
      devices: the devices of this process.
      devices_per_run: devices per cell.

    Returns:
      The groups (leftover devices that make no full group are unused).

    Raises:
      ValueError: more devices per run than there are (names ``sweep.devices_per_run``).
    """
    if devices_per_run == 0:
        return [list(devices)]
    if devices_per_run > len(devices):
        raise ValueError(
            f"sweep.devices_per_run={devices_per_run} but only {len(devices)} device(s) exist."
        )
    count = len(devices) // devices_per_run
    return [list(devices[i * devices_per_run : (i + 1) * devices_per_run]) for i in range(count)]


TrainFn = Callable[..., Mapping[str, float]]


def _train_cell(cell, config, devices, train_fn: TrainFn) -> dict[str, Any]:
    start = time.perf_counter()
    result = train_fn(config, cell.workdir, mesh=make_mesh(devices), show_progress=False)
    record = {
        "status": "done",
        "wall_s": time.perf_counter() - start,
        "devices": [str(d) for d in devices],
        "val_miou": result.get("miou"),
    }
    with open(os.path.join(cell.workdir, CELL_FILE), "w") as f:
        json.dump(record, f, indent=1)
    return record


def run_sweep(
    sweep: ml_collections.ConfigDict,
    directory: str | os.PathLike,
    *,
    repo_root: str,
    train_fn: TrainFn | None = None,
    write_report: bool = True,
    model_stats: bool = True,
) -> dict[str, Any]:
    """Trains every unfinished cell of a sweep, then writes its report.

    Args:
      sweep: the sweep config (see `parse_sweep`).
      directory: the sweep folder (created if needed).
      repo_root: the folder holding ``configs/`` (for ``sweep.base_config``).
      train_fn: trains one cell; default `bts_jax.train_lib.train_and_evaluate` (tests wrap it).
      write_report: write ``report.md`` and friends at the end.
      model_stats: count parameters and GFLOPs per variant in the report.

    Returns:
      ``{"trained": [cell names], "skipped": [cell names], "report": paths or None}``.

    Raises:
      ValueError: an invalid sweep definition, or one that changed under existing cells (named).
    """
    from bts_jax import train_lib  # heavy imports only when a sweep really runs

    train_fn = train_fn or train_lib.train_and_evaluate
    definition = parse_sweep(sweep)
    directory = os.path.abspath(os.fspath(directory))
    base = load_python_config(definition.base_config, repo_root)
    cells = expand_cells(definition, directory)
    configs = {cell.name: cell_config(definition, base, cell) for cell in cells}
    check_unchanged(cells, configs)
    groups = device_groups(jax.local_devices(), definition.devices_per_run)
    if jax.process_count() > 1 and len(groups) > 1:
        raise ValueError(
            "sweep.devices_per_run must be 0 on several hosts: cells then run one after another "
            "on all devices."
        )
    if jax.process_count() > 1:
        groups = [jax.devices()]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SWEEP_FILE), "w") as f:
        json.dump(definition.to_json(), f, indent=1)

    todo = [cell for cell in cells if not is_done(cell)]
    skipped = [cell.name for cell in cells if cell not in todo]
    for name in skipped:
        logging.info("sweep: %s is done; skipped.", name)
    trained = _run_cells(todo, configs, groups, train_fn, total=len(cells), done=len(skipped))
    paths = None
    if write_report:
        paths = report.write_report(
            directory, model_stats=model_stats, prediction_figure=prediction_figure
        )
    return {"trained": trained, "skipped": skipped, "report": paths}


def _run_cells(todo, configs, groups, train_fn, *, total: int, done: int) -> list[str]:
    """Runs cells on free device groups, one thread per group; returns the names trained."""
    from tqdm import tqdm

    free: queue.Queue = queue.Queue()
    for group in groups:
        free.put(group)
    lock = threading.Lock()
    bar = tqdm(total=total, initial=done, desc="sweep", unit="cell", dynamic_ncols=True)

    def work(cell):
        devices = free.get()
        try:
            with lock:
                tqdm.write(f"sweep: {cell.name} starts on {len(devices)} device(s)")
            record = _train_cell(cell, configs[cell.name], devices, train_fn)
            with lock:
                bar.update(1)
                tqdm.write(
                    f"sweep: {cell.name} done in {record['wall_s'] / 60:.1f} min, "
                    f"val mIoU {record['val_miou']:.4f}"
                )
            return cell.name
        finally:
            free.put(devices)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups)) as pool:
            return list(pool.map(work, todo))
    finally:
        bar.close()


def prediction_figure(sweep: report.Sweep, directory: str) -> str | None:
    """The paper's figure 8 for a sweep: baseline and paper model on the same test images.

    Uses the first seed (and fold) of both variants; nothing when either cell is unfinished or the
    sweep has no paper model.

    Args:
      sweep: the loaded sweep (`bts_jax.report.load_sweep`).
      directory: the sweep folder.

    Returns:
      The PNG's path, or None.
    """
    from bts_jax import figures

    if sweep.paper_model is None or sweep.paper_model == sweep.baseline:
        return None
    fold = None if sweep.folds is None else sweep.folds[0]
    a = report.cell_dir(directory, sweep.baseline, sweep.seeds[0], fold)
    b = report.cell_dir(directory, sweep.paper_model, sweep.seeds[0], fold)
    if not all(is_done(Cell("", 0, None, path)) for path in (a, b)):
        return None
    try:  # Results copied without their checkpoints still make a report, without this figure.
        for path in (a, b):
            checkpointing.resolve_checkpoint(path, "best")
    except FileNotFoundError as e:
        logging.warning("No side-by-side prediction figure: %s", e)
        return None
    config = checkpointing.load_config(a)
    split = "test" if float(config.data.get("test_fraction", 0.0)) > 0 else "validation"
    return figures.compare_workdirs(
        a,
        b,
        os.path.join(directory, "predictions_test.png"),
        names=(sweep.baseline, sweep.paper_model),
        split=split,
        num_images=8,
    )
