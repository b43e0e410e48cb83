"""Trained models drawn on their own data: a split with its predictions, two models side by side.

Two models side by side is the paper's figure 8. These read a dataset (the ground truth of the
images they show) as well as the workdir, unlike the rest of `bts_jax.inference`, which needs
only the workdir. Drawing itself is `bts_jax.evaluation.figures`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import ml_collections
import numpy as np

from bts_jax import data as data_lib
from bts_jax import workdir as workdir_lib
from bts_jax.data.formats import MASK_THRESHOLD
from bts_jax.evaluation.figures import (
    load_source,
    save_comparison_figure,
    write_overlays,
)
from bts_jax.inference.predict import predict_masks
from bts_jax.workdir.layout import PREDICTIONS_DIR


def _split_ids(workdir: str, config: ml_collections.ConfigDict, split: str) -> list[str]:
    """The split's ids as the run recorded them (data_split.json), else recomputed."""
    recorded = workdir_lib.recorded_split_ids(workdir, split)
    if recorded is not None:
        return recorded
    ids = data_lib.get_split_ids(config)
    if split not in ids:
        raise ValueError(f"split={split!r}; expected one of {sorted(ids)}.")
    return ids[split]


def _split_images(
    workdir: str, config: ml_collections.ConfigDict, split: str, num_images: int
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The first ``num_images`` (ids, uint8 images, binary masks) of a workdir's split."""
    ids = _split_ids(workdir, config, split)[:num_images]
    if not ids:
        raise ValueError(f"{workdir}'s {split} split is empty.")
    examples = {e.id: e for e in data_lib.get_examples(config.data, validate=False)}
    missing = [i for i in ids if i not in examples]
    if missing:
        raise ValueError(
            f"Ids {missing} of {workdir}'s {split} split are not in its data source "
            f"(config.data.source={config.data.source!r}, data_dir={config.data.data_dir!r})."
        )
    images = [load_source(examples[i].image) for i in ids]
    truths = [(load_source(examples[i].mask) > MASK_THRESHOLD).astype(np.uint8) for i in ids]
    return ids, images, truths


def save_split_predictions(
    workdir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    num_images: int = 8,
    split: str = "validation",
    which: str = "best",
) -> list[str]:
    """Draws a trained model's predictions on the first images of its own split, for looking at.

    Each PNG shows the image at its original size with the ground-truth contour in green and the
    predicted contour in red (`bts_jax.evaluation.figures.overlay_contours`).

    Args:
      workdir: a trained workdir.
      output_dir: where to write ``<id>.png``; default ``workdir/predictions``.
      num_images: how many images of the split (fewer if the split is smaller).
      split: "validation" or "train".
      which: checkpoint, "best", "latest" or "step:N".

    Returns:
      The written paths, in split order.
    """
    workdir = os.fspath(workdir)
    output_dir = os.fspath(output_dir or os.path.join(workdir, PREDICTIONS_DIR))
    config, model, variables = workdir_lib.load_trained_model(workdir, which)
    ids, images, truths = _split_images(workdir, config, split, num_images)
    predictions = predict_masks(model, variables, images, config.data)
    return write_overlays(output_dir, ids, images, truths, predictions)


def compare_workdirs(
    workdir_a: str | os.PathLike,
    workdir_b: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    num_images: int = 8,
    names: Sequence[str] | None = None,
    split: str = "validation",
    which: str = "best",
) -> str:
    """Draws two trained models' predictions side by side (the paper's figure 8) as one PNG.

    The images are the first ``num_images`` ids of ``workdir_a``'s split (as recorded in its
    ``data_split.json``), read from ``workdir_a``'s data source at their original size. Rows:
    images; columns: image, ground truth, model A, model B. Each model preprocesses the images
    with its own data config, so models trained at different resolutions compare fairly.

    Args:
      workdir_a: the first trained workdir; its split and data source give the images.
      workdir_b: the second trained workdir.
      output_path: PNG to write (parent folders are created).
      num_images: rows of the figure (fewer if the split is smaller).
      names: the two column titles; default the workdirs' folder names.
      split: "validation" or "train".
      which: checkpoint of both models, "best", "latest" or "step:N".

    Returns:
      ``output_path``.

    Warns:
      UserWarning: the two workdirs were split differently (different data settings), so the
        images may be training images of model B.

    Raises:
      FileNotFoundError: a workdir, checkpoint or data file is missing.
      ValueError: ``num_images < 1``, bad ``names``, or ids of the split missing from the source.
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1.")
    workdir_a, workdir_b = os.fspath(workdir_a), os.fspath(workdir_b)
    if names is None:
        names = [os.path.basename(os.path.normpath(w)) for w in (workdir_a, workdir_b)]
    if len(names) != 2:
        raise ValueError(f"names must hold two titles, got {list(names)}.")
    config_a = workdir_lib.load_config(workdir_a)
    config_b = workdir_lib.load_config(workdir_b)
    differ = [
        f"data.{key}: {config_a.data.get(key)!r} vs {config_b.data.get(key)!r}"
        for key in data_lib.SPLIT_SETTINGS
        if config_a.data.get(key) != config_b.data.get(key)
    ]
    if config_a.get("seed") != config_b.get("seed"):
        differ.append(f"seed: {config_a.get('seed')!r} vs {config_b.get('seed')!r}")
    if differ:
        warnings.warn(
            f"{workdir_a} and {workdir_b} were trained on different data splits ("
            + "; ".join(differ)
            + f"). The figure shows {workdir_a}'s {split} images, which "
            f"{workdir_b} may have trained on.",
            stacklevel=2,
        )
    _, images, truths = _split_images(workdir_a, config_a, split, num_images)
    predictions = []
    for workdir in (workdir_a, workdir_b):
        config, model, variables = workdir_lib.load_trained_model(workdir, which)
        predictions.append(predict_masks(model, variables, images, config.data))
    return save_comparison_figure(
        images, truths, predictions[0], predictions[1], os.fspath(output_path), names=tuple(names)
    )
