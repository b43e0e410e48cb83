"""Every file name of a run's workdir, in one place.

A workdir written by training holds::

    config.json              the run's config                      (`bts_jax.workdir.configs`)
    config_history.jsonl     every config the run has used          (`bts_jax.workdir.configs`)
    data_split.json          the train / validation / test ids      (`bts_jax.workdir.split_file`)
    environment.json         versions, devices, code and data       (`bts_jax.workdir.environment`)
    checkpoints/, best/      Orbax saves: latest N, best by mIoU    (`bts_jax.workdir.checkpoints`)
    metrics.jsonl, metrics.csv, tensorboard/   per-epoch metrics   (`bts_jax.workdir.metrics_log`)
    loss.png, miou.png       the per-epoch curves
    eval_<split>.json, per_image_<split>.csv   the final evaluation
    predictions/             validation images with contours
    .lock (.lock.<i>)        the run's lock                         (`bts_jax.workdir.lock`)

A ``config.num_seeds = K > 1`` run writes one such workdir per seed, ``seed_<s>/``, and nothing
but its lock in the run's own folder.
"""

from __future__ import annotations

import os

CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
SPLIT_FILE = "data_split.json"
ENVIRONMENT_FILE = "environment.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
LOSS_FIGURE = "loss.png"
MIOU_FIGURE = "miou.png"
PREDICTIONS_DIR = "predictions"
LOCK_FILE = ".lock"
SEED_DIR_PREFIX = "seed_"


def eval_file(split: str) -> str:
    """``eval_<split>.json``: the metrics of an evaluation (``split`` may carry a settings tag)."""
    return f"eval_{split}.json"


def per_image_file(split: str) -> str:
    """``per_image_<split>.csv``: one row per image of an evaluation."""
    return f"per_image_{split}.csv"


def seed_workdir(workdir: str | os.PathLike, seed: int) -> str:
    """The workdir of seed ``seed`` of a ``config.num_seeds > 1`` run in ``workdir``.

    Args:
      workdir: the multi-seed run's directory.
      seed: the seed (``config.seed + k``).

    Returns:
      ``<workdir>/seed_<seed>``: an ordinary workdir, as a single run of that seed writes.
    """
    return os.path.join(os.fspath(workdir), f"{SEED_DIR_PREFIX}{int(seed)}")


def seed_workdirs_in(workdir: str | os.PathLike) -> list[str]:
    """The seeds' workdirs (``seed_<s>/`` with a ``config.json``) inside a multi-seed run's folder.

    Args:
      workdir: a folder.

    Returns:
      Their paths, sorted; empty when there are none.
    """
    workdir = os.fspath(workdir)
    names = os.listdir(workdir) if os.path.isdir(workdir) else []
    return sorted(
        os.path.join(workdir, name)
        for name in names
        if name.startswith(SEED_DIR_PREFIX)
        and os.path.isfile(os.path.join(workdir, name, CONFIG_FILE))
    )
