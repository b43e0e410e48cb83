"""Scores prediction settings: ensembles of workdirs, TTA and post-processing, on a split or folder.

The plain evaluation of one checkpoint (`bts_jax.train.evaluate_checkpoint`) scores the model's
own decision. This module scores what `bts_jax.inference` predicts with a
`bts_jax.PredictionSettings` -- the averaged probabilities of several workdirs, the TTA
views, the threshold, the connected-component clean-up -- with the same metrics
(`bts_jax.evaluation.SegmentationEvaluator`) on the same preprocessed split, at the model's input
size, or on any labelled folder at each image's own size. There is no loss: an ensemble has no
logits of its own.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

import jax
import numpy as np

from bts_jax import data as data_lib
from bts_jax import evaluation
from bts_jax import workdir as workdir_lib
from bts_jax.data.formats import MASK_THRESHOLD
from bts_jax.data.sources import id_sort_key
from bts_jax.evaluation.figures import load_source
from bts_jax.inference.members import load_members, member_records
from bts_jax.inference.predict import batch_probabilities, predict_probabilities
from bts_jax.inference.settings import PredictionSettings, settings_tag


def warn_on_leakage(workdirs: Sequence[str], evaluated_ids: Sequence[str]) -> None:
    """Warns when an ensemble member trained on images of the evaluated split.

    Seeds of a random split, or folds of a k-fold sweep, each hold out different images: the
    ensemble's score on the first workdir's split is then optimistic.

    Args:
      workdirs: the members.
      evaluated_ids: ids of the evaluated split.
    """
    evaluated = set(evaluated_ids)
    for workdir in workdirs:
        trained = workdir_lib.recorded_split_ids(workdir, "train")
        if trained is None:
            continue
        seen = evaluated.intersection(trained)
        if seen:
            warnings.warn(
                f"{workdir} trained on {len(seen)} of the {len(evaluated)} evaluated images: the "
                "ensemble's score is optimistic.",
                stacklevel=2,
            )


def evaluate_settings(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    settings: Sequence[PredictionSettings],
    split: str = "validation",
    *,
    which: str = "best",
) -> list[evaluation.Evaluation]:
    """Scores several prediction settings of one workdir or an ensemble in one pass over a split.

    Each batch goes through the models once per distinct TTA setting; every settings then has its
    own `bts_jax.evaluation.SegmentationEvaluator`. The split and its preprocessing are those of the
    first workdir's config. Masks are made from the probabilities at the model's input size, as in
    the plain evaluation, so the post-processing ``min_size`` counts pixels of the model's input.

    Args:
      workdirs: a workdir or several (see `bts_jax.inference.load_members`).
      settings: the combinations of TTA, threshold and post-processing to score.
      split: "validation", "test" or "train".
      which: checkpoint of each, "best" or "latest".

    Returns:
      One `bts_jax.evaluation.Evaluation` per settings, in order, with the metrics of
      `bts_jax.evaluation.SegmentationEvaluator.result` (no ``loss``) and the per-image rows.

    Raises:
      ValueError: workdirs that cannot be ensembled, a threshold with a multi-class model, or
        more than one process (this evaluation runs on one host).
    """
    if jax.process_count() > 1:
        raise ValueError("Settings are evaluated on one process; start it without others.")
    config, members = load_members(workdirs, which)
    num_classes = int(config.model.num_classes)
    pipeline = data_lib.InputPipeline(config, process_index=0, process_count=1)
    workdirs = [workdirs] if isinstance(workdirs, str | os.PathLike) else workdirs
    warn_on_leakage([os.fspath(w) for w in workdirs], [e.id for e in pipeline.examples(split)])
    evaluators = [evaluation.SegmentationEvaluator(num_classes) for _ in settings]
    for batch in pipeline.eval_batches(split):
        valid = np.asarray(batch["valid"], bool)
        if not valid.any():
            continue
        by_tta = {}
        for chosen, evaluator in zip(settings, evaluators, strict=True):
            if chosen.tta not in by_tta:
                probabilities = batch_probabilities(members, batch["image"], chosen.tta)
                by_tta[chosen.tta] = probabilities[..., 0] if num_classes == 1 else probabilities
            masks = np.stack([chosen.to_mask(p) for p in by_tta[chosen.tta]])
            confusion = evaluation.confusion_matrix(masks, batch["mask"], num_classes, valid)
            evaluator.update(confusion, masks, batch["mask"], valid, batch["id"])
    found = []
    for evaluator in evaluators:
        rows = evaluator.per_image_rows()
        rows.sort(key=lambda row: id_sort_key(str(row["id"])))
        values = {key: float(value) for key, value in evaluator.result().items()}
        found.append(evaluation.Evaluation(metrics=values, per_image=rows, predictions={}))
    return found


def evaluate_predictions(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "validation",
    *,
    which: str = "best",
    settings: PredictionSettings | None = None,
) -> evaluation.Evaluation:
    """Scores the predictions of one workdir or an ensemble, with settings, on a split.

    Args:
      workdirs: a workdir or several (see `bts_jax.inference.load_members`).
      split: "validation", "test" or "train".
      which: checkpoint of each, "best" or "latest".
      settings: TTA, threshold and post-processing (default: none, threshold 0.5).

    Returns:
      The `bts_jax.evaluation.Evaluation` of `evaluate_settings`.
    """
    settings = settings or PredictionSettings()
    (found,) = evaluate_settings(workdirs, [settings], split, which=which)
    return found


def evaluate_examples(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    examples: Sequence[data_lib.Example],
    *,
    which: str = "best",
    settings: PredictionSettings | None = None,
    batch_size: int = 8,
) -> evaluation.Evaluation:
    """Scores one workdir or an ensemble on labelled examples, each image at its own size.

    Each image is predicted as ``predict.py`` does (preprocessed, then mapped back to its own
    pixel grid, TTA and post-processing applied there) and scored against its own mask with the
    metrics of `bts_jax.evaluation.SegmentationEvaluator`: split-level counts over all pixels at
    native sizes, and per-image Dice, IoU, HD95 (mm from each image's size) and boundary IoU.

    Args:
      workdirs: a workdir or several (an ensemble; see `bts_jax.inference.load_members`).
      examples: the images and masks (files or encoded bytes), e.g. a folder's.
      which: checkpoint of each, "best" or "latest".
      settings: TTA, threshold and post-processing (default: none, threshold 0.5).
      batch_size: images per forward pass.

    Returns:
      The `bts_jax.evaluation.Evaluation` (no ``loss``), per-image rows sorted by id.

    Raises:
      ValueError: no examples, or workdirs that cannot be ensembled.
    """
    if not examples:
        raise ValueError("No labelled images to score.")
    settings = settings or PredictionSettings()
    workdirs = [workdirs] if isinstance(workdirs, str | os.PathLike) else list(workdirs)
    config, members = load_members(workdirs, which)
    num_classes = int(config.model.num_classes)
    evaluator = evaluation.SegmentationEvaluator(num_classes)
    # Chunks bound host memory on folders of thousands of images.
    for start in range(0, len(examples), 64):
        chunk = examples[start : start + 64]
        images = [_read_image(e.image) for e in chunk]
        probabilities = predict_probabilities(
            members, images, config.data, tta=settings.tta, batch_size=batch_size
        )
        for example, probs in zip(chunk, probabilities, strict=True):
            truth = (load_source(example.mask) > MASK_THRESHOLD).astype(np.int32)[None]
            prediction = settings.to_mask(probs)[None].astype(np.int32)
            # Each image has its own size: its counts, with the device rules, compiled per size.
            confusion = _image_confusion(prediction, truth, num_classes)
            evaluator.update(confusion, prediction, truth, ids=[example.id])
    rows = sorted(evaluator.per_image_rows(), key=lambda row: id_sort_key(row["id"]))
    return evaluation.Evaluation(
        metrics={k: float(v) for k, v in evaluator.result().items()},
        per_image=rows,
        predictions={},
    )


def _read_image(source: str | bytes) -> np.ndarray:
    """An image as ``predict.py`` reads it: any file format it takes, or encoded bytes (TFDS)."""
    return data_lib.read_image_file(source) if isinstance(source, str) else load_source(source)


# One compiled confusion count per image size (the eager version dispatches op by op).
_image_confusion = jax.jit(evaluation.confusion_matrix, static_argnums=2)


def evaluate_folder(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    which: str = "best",
    settings: PredictionSettings | None = None,
    batch_size: int = 8,
) -> tuple[evaluation.Evaluation, dict[str, int]]:
    """Scores one workdir or an ensemble on any labelled folder, at each image's own size.

    The folder is in the Kaggle layout (``images/``, ``masks/``, optional ``metadata.csv``) and is
    checked like a training folder (every file decoded; errors name the file); its images are
    scored by `evaluate_examples`.

    Args:
      workdirs: a workdir or several (an ensemble; see `bts_jax.inference.load_members`).
      data_dir: the labelled folder.
      which: checkpoint of each, "best" or "latest".
      settings: TTA, threshold and post-processing (default: none, threshold 0.5).
      batch_size: images per forward pass.

    Returns:
      ``(evaluation, labels)``: the `bts_jax.evaluation.Evaluation` (no ``loss``) and the folder's
      id -> tumour type labels.

    Raises:
      FileNotFoundError, ValueError: a missing or broken folder (the file is named), or workdirs
        that cannot be ensembled.
    """
    data_config = {"source": "folder", "data_dir": os.fspath(data_dir), "strict_masks": False}
    examples = data_lib.get_examples(data_config, validate=True)
    found = evaluate_examples(
        workdirs, examples, which=which, settings=settings, batch_size=batch_size
    )
    return found, {e.id: e.label for e in examples}


def write_prediction_evaluation(
    found: evaluation.Evaluation,
    workdirs: Sequence[str | os.PathLike],
    split: str,
    *,
    which: str,
    settings: PredictionSettings,
    output_dir: str | os.PathLike | None = None,
    labels: dict[str, int] | None = None,
) -> tuple[str, str | None]:
    """Writes ``eval_<split>_<tag>.json`` and ``per_image_<split>_<tag>.csv`` (see `settings_tag`).

    The JSON holds the metrics and, under ``"prediction"``, the members (workdir, checkpoint step)
    and the settings.

    Args:
      found: the result of `evaluate_predictions`.
      workdirs: its members.
      split: its split.
      which: its checkpoint choice.
      settings: its settings.
      output_dir: where to write; default the first workdir.
      labels: id -> tumour type of the evaluated images; default the first workdir's source.

    Returns:
      The two paths (the CSV's is None when there are no per-image rows).
    """
    workdirs = [os.fspath(w) for w in workdirs]
    output_dir = os.fspath(output_dir or workdirs[0])
    os.makedirs(output_dir, exist_ok=True)
    record = dict(found.metrics)
    record["prediction"] = {
        "members": member_records(workdirs, which),
        **dataclasses.asdict(settings),
    }
    if labels is None:
        config = workdir_lib.load_config(workdirs[0])
        labels = {e.id: e.label for e in data_lib.get_examples(config.data, validate=False)}
    name = f"{split}_{settings_tag(len(workdirs), settings)}"
    return evaluation.write_evaluation(
        dataclasses.replace(found, metrics=record), output_dir, name, labels
    )
