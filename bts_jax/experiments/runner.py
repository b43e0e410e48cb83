"""Runs a sweep: every unfinished cell as an ordinary training run, then the report.

Restartable: a finished cell has ``cell.json`` with ``"status": "done"`` and is skipped; an
interrupted cell resumes from its own checkpoints; a cell whose resolved config differs from the one
it was trained with stops the sweep with the differing fields. On a machine with several devices,
cells run concurrently on disjoint groups of ``devices_per_run`` devices (one thread per group, each
run on its own mesh), as nnU-Net users run one fold per GPU.
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
from bts_jax.experiments.sweeps import (
    Cell,
    SweepDefinition,
    cell_config,
    cell_dir,
    expand_cells,
    is_done,
    parse_sweep,
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


def _train_cell(cell, config, devices, train_fn: TrainFn) -> dict[str, Any]:
    start = time.perf_counter()
    results = train_fn(config, cell.workdir, mesh=make_mesh(devices), show_progress=False)
    (result,) = results
    record = {
        "status": "done",
        "wall_s": time.perf_counter() - start,
        "devices": [str(d) for d in devices],
        "val_miou": result.metrics.get("miou"),
    }
    write_cell_status(cell.workdir, record)
    return record


def run_sweep(
    sweep: ml_collections.ConfigDict,
    directory: str | os.PathLike,
    *,
    repo_root: str | None = None,
    train_fn: TrainFn | None = None,
    write_report: bool = True,
    model_stats: bool = True,
) -> dict[str, Any]:
    """Trains every unfinished cell of a sweep, then writes its report.

    Args:
      sweep: the sweep config (see `parse_sweep`).
      directory: the sweep folder (created if needed).
      repo_root: a folder ``sweep.base_config`` is looked up in first; it is otherwise a config
        file or preset name (`bts_jax.config_tools.resolve_config_file`).
      train_fn: trains one cell; default `bts_jax.train.train_and_evaluate` (tests wrap it).
      write_report: write ``report.md`` and friends at the end.
      model_stats: count parameters and GFLOPs per variant in the report.

    Returns:
      ``{"trained": [cell names], "skipped": [cell names], "report": paths or None}``.

    Raises:
      ValueError: an invalid sweep definition, or one that changed under existing cells (named).
    """
    from bts_jax import train  # heavy imports only when a sweep really runs

    train_fn = train_fn or train.train_and_evaluate
    definition = parse_sweep(sweep)
    directory = os.path.abspath(os.fspath(directory))
    base = load_config_file(definition.base_config, repo_root)
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
    write_sweep(definition, directory)

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


def prediction_figure(sweep: SweepDefinition, directory: str) -> str | None:
    """The paper's figure 8 for a sweep: baseline and paper model on the same test images.

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
        os.path.join(directory, "predictions_test.png"),
        names=(sweep.baseline, sweep.paper_model),
        split=split,
        num_images=8,
    )
