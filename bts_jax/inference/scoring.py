"""Scores prediction settings: ensembles of workdirs, TTA and post-processing, on a split or folder.

The plain evaluation of one checkpoint (`bts_jax.train.evaluate_checkpoint`) scores the model's
own decision. This module scores what `bts_jax.inference` predicts with a
`bts_jax.PredictionSettings` -- the averaged probabilities of several workdirs, the TTA
views, the threshold, the connected-component clean-up -- with the same metrics
(`bts_jax.evaluation.evaluation_of`) on the same preprocessed split, at the model's input
size, or on any labelled folder at each image's own size. There is no loss: an ensemble has no
logits of its own.

`score_split` and `score_examples` are the ways in for a split and for a labelled folder
(docs/architecture.md, "One evaluation path"): ``evaluate.py`` and a sweep's test folder come
through them, one model's own decision on its split goes on to the training's evaluation, and
every file is written by `bts_jax.evaluation.write_evaluation`.
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
from bts_jax.evaluation.figures import load_source
from bts_jax.inference.members import load_members, member_records
from bts_jax.inference.predict import batch_probabilities, predict_probabilities
from bts_jax.inference.settings import PredictionSettings, settings_tag
from bts_jax.workdir.layout import eval_file


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
      which: checkpoint of each, "best", "latest" or "step:N".

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
    return [evaluation.evaluation_of(evaluator) for evaluator in evaluators]


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
      which: checkpoint of each, "best", "latest" or "step:N".
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
      which: checkpoint of each, "best", "latest" or "step:N".
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
    return evaluation.evaluation_of(evaluator)


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
      which: checkpoint of each, "best", "latest" or "step:N".
      settings: TTA, threshold and post-processing (default: none, threshold 0.5).
      batch_size: images per forward pass.

    Returns:
      ``(evaluation, labels)``: the `bts_jax.evaluation.Evaluation` (no ``loss``) and the folder's
      id -> tumour type labels.

    Raises:
      FileNotFoundError, ValueError: a missing or broken folder (the file is named), or workdirs
        that cannot be ensembled.
    """
    examples = folder_examples(data_dir)
    found = evaluate_examples(
        workdirs, examples, which=which, settings=settings, batch_size=batch_size
    )
    return found, {e.id: e.label for e in examples}


def folder_examples(data_dir: str | os.PathLike) -> tuple[data_lib.Example, ...]:
    """A labelled folder's images and masks, every file checked (errors name the file).

    Args:
      data_dir: a folder in the Kaggle layout (``images/``, ``masks/``, optional
        ``metadata.csv``).

    Returns:
      The examples, sorted by id.

    Raises:
      FileNotFoundError, ValueError: a missing or broken folder.
    """
    data_config = {"source": "folder", "data_dir": os.fspath(data_dir), "strict_masks": False}
    return data_lib.get_examples(data_config, validate=True)


def prediction_record(
    workdirs: Sequence[str | os.PathLike], which: str, settings: PredictionSettings
) -> dict:
    """How predictions were made, as an evaluation file records it under ``"prediction"``.

    Args:
      workdirs: the members.
      which: their checkpoint choice.
      settings: TTA, threshold and post-processing.

    Returns:
      ``{"members": [{workdir, checkpoint step}...], "tta": ..., "threshold": ..., ...}``.
    """
    return {
        "members": member_records([os.fspath(w) for w in workdirs], which),
        **dataclasses.asdict(settings),
    }


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
    record["prediction"] = prediction_record(workdirs, which, settings)
    if labels is None:
        config = workdir_lib.load_config(workdirs[0])
        labels = {e.id: e.label for e in data_lib.get_examples(config.data, validate=False)}
    name = f"{split}_{settings_tag(len(workdirs), settings)}"
    return evaluation.write_evaluation(
        dataclasses.replace(found, metrics=record), output_dir, name, labels
    )


def score_split(
    workdirs: Sequence[str | os.PathLike],
    split: str,
    *,
    which: str = "best",
    settings: PredictionSettings | None = None,
    output_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, float], str]:
    """Scores workdirs on a split of the first one's data and writes the evaluation files.

    ``evaluate.py``'s way to a split. One model's own decision (one workdir, plain settings, its
    own folder) is scored by `bts_jax.train.evaluate_checkpoint`, the function the end of
    training scores through, so ``eval_<split>.json`` holds the same numbers whether training or
    ``evaluate.py`` wrote it. What one checkpoint alone does not predict (an ensemble, TTA,
    another threshold, post-processing) is scored by `evaluate_predictions` and written by
    `write_prediction_evaluation`, its name tagged with the settings.

    Args:
      workdirs: one workdir or several (an ensemble).
      split: "validation", "test" or "train".
      which: checkpoint of each, "best", "latest" or "step:N".
      settings: TTA, threshold and post-processing (default: none, threshold 0.5).
      output_dir: where a settings evaluation goes; default the first workdir.

    Returns:
      ``(metrics, json_path)``.
    """
    settings = settings or PredictionSettings()
    workdirs = [os.fspath(w) for w in workdirs]
    if len(workdirs) == 1 and settings == PredictionSettings() and not output_dir:
        from bts_jax import train  # The layer above: the training's own evaluation.

        (path,) = workdirs
        config = workdir_lib.load_config(path)
        metrics = train.evaluate_checkpoint(config, path, split, which=which)
        return metrics, os.path.join(path, eval_file(split))
    found = evaluate_predictions(workdirs, split, which=which, settings=settings)
    json_path, _ = write_prediction_evaluation(
        found, workdirs, split, which=which, settings=settings, output_dir=output_dir
    )
    return found.metrics, json_path


def score_examples(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    examples: Sequence[data_lib.Example],
    directory: str | os.PathLike,
    name: str,
    *,
    which: str = "best",
    settings: PredictionSettings | None = None,
    batch_size: int = 8,
    record: dict | None = None,
) -> tuple[evaluation.Evaluation, str]:
    """Scores workdirs on labelled images at their own sizes and writes the evaluation files.

    The one path of a labelled folder's scores: ``evaluate.py --data_dir``, a sweep's test folder
    (`bts_jax.experiments.cells.score_on_test_folder`) and the held-out benchmark score through
    `evaluate_examples`, and the first two write ``eval_<name>.json`` and
    ``per_image_<name>.csv`` here, with the checkpoint's ``step`` (one workdir) and ``record``.

    Args:
      workdirs: a workdir or several (an ensemble).
      examples: the labelled images.
      directory: where the files go.
      name: the evaluation's name (``external_test``, ``folder_<settings tag>``).
      which: checkpoint of each, "best", "latest" or "step:N".
      settings: TTA, threshold and post-processing (default: none, threshold 0.5).
      batch_size: images per forward pass.
      record: more entries of the JSON (where the images came from, how they were predicted).

    Returns:
      ``(evaluation, json_path)``: the evaluation's metrics include ``step`` and ``record``.
    """
    workdirs = [workdirs] if isinstance(workdirs, str | os.PathLike) else list(workdirs)
    found = evaluate_examples(
        workdirs, examples, which=which, settings=settings, batch_size=batch_size
    )
    if len(workdirs) == 1:
        found.metrics["step"] = workdir_lib.resolve_checkpoint(workdirs[0], which)[1]
    found.metrics.update(record or {})
    os.makedirs(directory, exist_ok=True)
    labels = {e.id: e.label for e in examples}
    json_path, _ = evaluation.write_evaluation(found, directory, name, labels)
    return found, json_path
