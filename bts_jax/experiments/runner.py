"""Runs a sweep: every unfinished cell as an ordinary training run, then the report.

Restartable: a finished cell has ``cell.json`` with ``"status": "done"`` and is skipped; an
interrupted cell resumes from its own checkpoints; a cell whose resolved config differs from the one
it was trained with stops the sweep with the differing fields. On a machine with several devices,
cells run concurrently on disjoint groups of ``devices_per_run`` devices (one thread per group, each
run on its own mesh), as nnU-Net users run one fold per GPU.

Beyond one machine, cells are jobs of a scheduler: ``cells=[K]`` (``sweep.py --cell K``) runs one
cell, and several processes may run cells of one sweep folder at once: a cell's workdir lock makes
it single-writer, a process that finds a cell locked by another leaves it and goes on, and the
sweep's own files (``sweep.json``, ``cell.json``) are written whole and renamed. The report is then
written once, by ``report.py DIR``.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from bts_jax import workdir as workdir_lib
from bts_jax.config_tools import flatten_config, load_config_file
from bts_jax.experiments import report
from bts_jax.experiments.cells import (
    DONE,
    cell_state,
    reproduce,
    score_on_test_folder,
    test_examples,
)
from bts_jax.experiments.sweeps import (
    Cell,
    SweepDefinition,
    cell_config,
    cell_dir,
    expand_cells,
    is_done,
    parse_sweep,
    read_cell_status,
    write_cell_status,
    write_sweep,
)
from bts_jax.sharding import make_mesh


def check_unchanged(cells: Sequence[Cell], configs: Mapping[str, ml_collections.ConfigDict]):
    """Refuses to continue a sweep whose definition changed under cells already started.

    Args:
      cells: the sweep's cells.
      configs: cell name -> the config the sweep now gives it.

    Raises:
      ValueError: naming the first cell whose saved ``config.json`` differs, and how.
    """
    for cell in cells:
        saved = workdir_lib.read_saved_config(cell.workdir)
        if saved is None:
            continue
        changes = workdir_lib.diff_configs(saved, flatten_config(configs[cell.name]))
        diff = [f"{c.field}: {c.old!r} -> {c.new!r}" for c in changes]
        if diff:
            raise ValueError(
                f"The sweep definition changed under its existing cell {cell.name} "
                f"({cell.workdir}): "
                + "; ".join(diff[:8])
                + (" ..." if len(diff) > 8 else "")
                + ". Use a new sweep folder, or delete that cell to retrain it."
            )


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


# Trains one cell: `bts_jax.train.train_and_evaluate`'s signature and return value.
TrainFn = Callable[..., Sequence[Any]]


def _train_cell(cell, config, devices, train_fn: TrainFn, tests) -> dict[str, Any] | None:
    """Trains (or resumes) a cell, scores it on the test folder, marks it done.

    Returns None when another process holds the cell (it goes on there).
    """
    start = time.perf_counter()
    status = read_cell_status(cell.workdir)
    if status is not None and status.get("status") == "done":
        record = dict(status)  # trained before the sweep had a test folder: only scoring is left
    else:
        try:
            results = train_fn(config, cell.workdir, mesh=make_mesh(devices), show_progress=False)
        except workdir_lib.WorkdirLockedError as e:
            logging.warning(
                "sweep: %s is in use by another process; left to it. (%s)", cell.name, e
            )
            return None
        (result,) = results
        record = {
            "status": "done",
            "wall_s": time.perf_counter() - start,
            "devices": [str(d) for d in devices],
            "val_miou": result.metrics.get("miou"),
        }
    if tests is not None:
        score_on_test_folder(cell, tests[0], tests[1])
    write_cell_status(cell.workdir, record)
    return record


def prepare_sweep(
    sweep: ml_collections.ConfigDict, directory: str | os.PathLike, repo_root: str | None = None
) -> tuple[SweepDefinition, str, list[Cell], dict[str, ml_collections.ConfigDict]]:
    """Checks a sweep and resolves every cell's config; writes ``sweep.json``.

    Args:
      sweep: the sweep config (see `bts_jax.experiments.sweeps.parse_sweep`).
      directory: the sweep folder (created if needed).
      repo_root: a folder ``sweep.base_config`` is looked up in first; it is otherwise a config
        file or preset name (`bts_jax.config_tools.resolve_config_file`).

    Returns:
      ``(definition, directory, cells, configs)``: the checked definition, the absolute folder,
      every cell in index order and cell name -> its config.

    Raises:
      ValueError: an invalid sweep definition, or one that changed under existing cells (named).
    """
    definition = parse_sweep(sweep)
    directory = os.path.abspath(os.fspath(directory))
    base = load_config_file(definition.base_config, repo_root)
    cells = expand_cells(definition, directory)
    configs = {cell.name: cell_config(definition, base, cell) for cell in cells}
    check_unchanged(cells, configs)
    write_sweep(definition, directory)
    return definition, directory, cells, configs


def list_cells(sweep: ml_collections.ConfigDict, directory: str | os.PathLike) -> list[str]:
    """``sweep.py --list``: one line per cell, ``index  name  state``.

    Args:
      sweep: the sweep config.
      directory: the sweep folder.

    Returns:
      The lines (the index is what ``sweep.py --cell`` and a job array take).
    """
    definition, _, cells, _ = prepare_sweep(sweep, directory)
    width = max(len(cell.name) for cell in cells)
    return [
        f"{i:4d}  {cell.name:<{width}}  {cell_state(cell, definition)}"
        for i, cell in enumerate(cells)
    ]


def run_sweep(
    sweep: ml_collections.ConfigDict,
    directory: str | os.PathLike,
    *,
    repo_root: str | None = None,
    train_fn: TrainFn | None = None,
    write_report: bool = True,
    model_stats: bool = True,
    cells: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Trains every unfinished cell of a sweep (or the given ones), then writes its report.

    Args:
      sweep: the sweep config (see `bts_jax.experiments.sweeps.parse_sweep`).
      directory: the sweep folder (created if needed).
      repo_root: a folder ``sweep.base_config`` is looked up in first (see `prepare_sweep`).
      train_fn: trains one cell; default `bts_jax.train.train_and_evaluate` (tests wrap it).
      write_report: write ``report.md`` and friends at the end.
      model_stats: count parameters and GFLOPs per variant in the report.
      cells: indices of the cells to run (``sweep.py --list``); default every cell.

    Returns:
      ``{"trained": [cell names], "skipped": [cell names], "busy": [cell names], "report": paths
      or None}``: busy cells were held by another process.

    Raises:
      ValueError: an invalid sweep definition, one that changed under existing cells, or a cell
        index out of range (named).
    """
    from bts_jax import train  # heavy imports only when a sweep really runs

    train_fn = train_fn or train.train_and_evaluate
    definition, directory, all_cells, configs = prepare_sweep(sweep, directory, repo_root)
    chosen = _chosen(all_cells, cells)
    groups = device_groups(jax.local_devices(), definition.devices_per_run)
    if jax.process_count() > 1 and len(groups) > 1:
        raise ValueError(
            "sweep.devices_per_run must be 0 on several hosts: cells then run one after another "
            "on all devices."
        )
    if jax.process_count() > 1:
        groups = [jax.devices()]
    examples = test_examples(definition)
    tests = None if examples is None else (definition, examples)

    todo = [cell for cell in chosen if cell_state(cell, definition) != DONE]
    skipped = [cell.name for cell in chosen if cell not in todo]
    for name in skipped:
        logging.info("sweep: %s is done; skipped.", name)
    finished = _run_cells(
        todo, configs, groups, train_fn, tests, total=len(chosen), done=len(skipped)
    )
    trained = [name for name, record in finished if record is not None]
    busy = [name for name, record in finished if record is None]
    paths = None
    if write_report:
        paths = report.write_report(
            directory, model_stats=model_stats, prediction_figure=prediction_figure
        )
    return {"trained": trained, "skipped": skipped, "busy": busy, "report": paths}


def _chosen(cells: Sequence[Cell], indices: Sequence[int] | None) -> list[Cell]:
    if indices is None:
        return list(cells)
    bad = [i for i in indices if not 0 <= i < len(cells)]
    if bad:
        raise ValueError(
            f"Cell index {bad} out of range: the sweep has cells 0-{len(cells) - 1} "
            "(sweep.py --list shows them)."
        )
    return [cells[i] for i in indices]


def reproduce_cell(
    sweep: ml_collections.ConfigDict,
    directory: str | os.PathLike,
    index: int,
    *,
    train_fn: TrainFn | None = None,
) -> dict[str, Any]:
    """``sweep.py --reproduce K``: trains finished cell K again and compares (`cells.reproduce`).

    Args:
      sweep: the sweep config.
      directory: the sweep folder.
      index: the cell's index (``sweep.py --list``).
      train_fn: trains one run; default `bts_jax.train.train_and_evaluate`.

    Returns:
      The record written to ``reproducibility.json``.
    """
    from bts_jax import train

    definition, directory, all_cells, configs = prepare_sweep(sweep, directory)
    (cell,) = _chosen(all_cells, [index])
    return reproduce(
        cell, configs[cell.name], definition, directory, train_fn or train.train_and_evaluate
    )


def _run_cells(
    todo, configs, groups, train_fn, tests, *, total: int, done: int
) -> list[tuple[str, dict[str, Any] | None]]:
    """Runs cells on free device groups, one thread per group: (name, record or None if busy)."""
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
            record = _train_cell(cell, configs[cell.name], devices, train_fn, tests)
            with lock:
                bar.update(1)
                if record is None:
                    tqdm.write(f"sweep: {cell.name} is in use by another process; left to it")
                else:
                    tqdm.write(
                        f"sweep: {cell.name} done in {record['wall_s'] / 60:.1f} min, "
                        f"val mIoU {record['val_miou']:.4f}"
                    )
            return cell.name, record
        finally:
            free.put(devices)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups)) as pool:
            return list(pool.map(work, todo))
    finally:
        bar.close()


def prediction_figure(sweep: SweepDefinition, directory: str) -> str | None:
    """The paper's figure 8 for a sweep: baseline and paper model on the same test images.

    Drawn on the test split, or on validation for a sweep without one; the file is named after the
    split drawn (`bts_jax.experiments.report.predictions_figure_file`).

    Uses the first seed (and fold) of both variants; nothing when either cell is unfinished or the
    sweep has no paper model.

    Args:
      sweep: the loaded sweep (`bts_jax.experiments.sweeps.load_sweep`).
      directory: the sweep folder.

    Returns:
      The PNG's path, or None.
    """
    from bts_jax.inference.compare import compare_workdirs

    if sweep.paper_model is None or sweep.paper_model == sweep.baseline:
        return None
    fold = None if sweep.folds is None else sweep.folds[0]
    a = cell_dir(directory, sweep.baseline, sweep.seeds[0], fold)
    b = cell_dir(directory, sweep.paper_model, sweep.seeds[0], fold)
    if not all(is_done(Cell("", 0, None, path)) for path in (a, b)):
        return None
    try:  # Results copied without their checkpoints still make a report, without this figure.
        for path in (a, b):
            workdir_lib.resolve_checkpoint(path, "best")
    except FileNotFoundError as e:
        logging.warning("No side-by-side prediction figure: %s", e)
        return None
    config = workdir_lib.load_config(a)
    split = "test" if float(config.data.get("test_fraction", 0.0)) > 0 else "validation"
    return compare_workdirs(
        a,
        b,
        os.path.join(directory, report.predictions_figure_file(split)),
        names=(sweep.baseline, sweep.paper_model),
        split=split,
        num_images=8,
    )
