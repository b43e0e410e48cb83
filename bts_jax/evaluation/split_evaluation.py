"""Evaluation over a whole split: split-level metrics from sums, per-image metrics where wanted.

The confusion matrix and the loss sum come from the jitted eval step over the global batch, so they
are the same on every host. Per-image metrics (Dice, IoU, HD95, boundary IoU) are computed on the
host, each host for its own images only, and the per-image lists are then gathered once at the end,
so no host computes HD95 for another host's images. `write_evaluation` writes what was found as
``eval_<split>.json`` and ``per_image_<split>.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from bts_jax import jsonio
from bts_jax.data.sources import TUMOUR_TYPES, id_sort_key
from bts_jax.evaluation.confusion import metrics_from_confusion
from bts_jax.evaluation.evaluator import PER_IMAGE_KEYS, SegmentationEvaluator
from bts_jax.sharding import host_local, make_global_batch
from bts_jax.workdir.layout import eval_file, per_image_file

# Longest image id that can cross hosts (ids travel as fixed-width bytes).
_MAX_ID_BYTES = 128


@dataclasses.dataclass
class Evaluation:
    """What `evaluate` found.

    Attributes:
      metrics: split-level metrics (see `evaluate`).
      per_image: one dict per image (``id`` and `bts_jax.PER_IMAGE_KEYS`), sorted by id;
        empty when per-image metrics were not asked for.
      predictions: id -> uint8 (S, S) predicted class map at the model's input size, for the
        ``keep_ids`` this host evaluated.
    """

    metrics: dict[str, float]
    per_image: list[dict[str, str | float | int | bool]]
    predictions: dict[str, np.ndarray]


def _encode_ids(ids: list[str], capacity: int) -> np.ndarray:
    encoded = np.zeros((capacity, _MAX_ID_BYTES), np.uint8)
    for i, image_id in enumerate(ids):
        raw = image_id.encode()
        if len(raw) > _MAX_ID_BYTES:
            raise ValueError(f"Image id {image_id!r} is longer than {_MAX_ID_BYTES} bytes.")
        encoded[i, : len(raw)] = np.frombuffer(raw, np.uint8)
    return encoded


def _gather_per_image(
    evaluator: SegmentationEvaluator, capacity: int
) -> tuple[list[str], dict[str, list]]:
    """Every host's per-image lists, on every host (one all-gather of fixed-size arrays)."""
    n = len(evaluator.ids)
    values = np.zeros((capacity, len(PER_IMAGE_KEYS)), np.float64)
    for j, key in enumerate(PER_IMAGE_KEYS):
        values[:n, j] = evaluator.per_image[key]
    present = np.zeros(capacity, bool)
    present[:n] = True
    gathered = multihost_utils.process_allgather(
        {"values": values, "present": present, "ids": _encode_ids(evaluator.ids, capacity)}
    )
    keep = np.asarray(gathered["present"]).reshape(-1)
    rows = np.asarray(gathered["values"]).reshape(-1, values.shape[1])[keep]
    id_bytes = np.asarray(gathered["ids"]).reshape(-1, _MAX_ID_BYTES)[keep]
    ids = [bytes(b).rstrip(b"\0").decode() for b in id_bytes]
    per_image = {}
    for j, key in enumerate(PER_IMAGE_KEYS):
        column = rows[:, j].tolist()
        if key in ("truth_pixels", "pred_pixels"):
            column = [int(v) for v in column]
        elif key in ("gt_empty", "pred_empty"):
            column = [bool(v) for v in column]
        per_image[key] = column
    return ids, per_image


def evaluate(
    eval_fn: Callable,
    state: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: Mesh,
    *,
    num_classes: int,
    per_image: bool = True,
    keep_ids: Collection[str] = (),
) -> Evaluation:
    """Evaluates ``state`` over a whole split: metrics from sums, never averages of ratios.

    Args:
      eval_fn: a compiled `bts_jax.train.steps.eval_step`; with ``per_image`` or ``keep_ids`` it
        must return predictions (``make_eval_step(..., with_predictions=True)``).
      state: the train state to evaluate.
      batches: host-local eval batches (padded entries have ``valid=False``).
      mesh: the device mesh.
      num_classes: the model's output channels.
      per_image: also compute per-image Dice, IoU, HD95 and boundary IoU (on the host).
      keep_ids: ids whose predicted class maps to return (those this host evaluates).

    Returns:
      An `Evaluation`: ``loss`` (mean over images), ``num_images`` and the metrics of
      `bts_jax.SegmentationEvaluator` (only the confusion-matrix ones without
      ``per_image``).

    Raises:
      ValueError: the split produced no batches, or predictions were needed but not returned.
    """
    evaluator = SegmentationEvaluator(num_classes)
    keep_ids = set(keep_ids)
    kept: dict[str, np.ndarray] = {}
    needs_predictions = per_image or bool(keep_ids)
    sums = []  # per batch, on the devices until the end: (loss_sum, num_valid, confusion)
    previous = None  # the last batch, whose predictions the host handles after the next dispatch
    slots = 0

    def take_predictions(out, local_batch) -> None:
        nonlocal slots
        if "predictions" not in out:
            raise ValueError("eval_fn returns no predictions: build it with_predictions=True.")
        predictions = host_local(out["predictions"], mesh)
        valid = np.asarray(local_batch["valid"], bool)
        slots += len(valid)
        if per_image:
            evaluator.add_images(predictions, local_batch["mask"], valid, local_batch["id"])
        for image_id, prediction, ok in zip(local_batch["id"], predictions, valid, strict=True):
            if ok and str(image_id) in keep_ids:
                kept[str(image_id)] = np.asarray(prediction, np.uint8)

    for local_batch in batches:
        # Dispatched without waiting: the devices compute this batch while the host works on
        # the previous one's predictions, and no sum leaves the devices before the split ends.
        out = eval_fn(state, make_global_batch(local_batch, mesh))
        sums.append((out["loss_sum"], out["num_valid"], out["confusion"]))
        if previous is not None:
            take_predictions(*previous)
        previous = (out, local_batch) if needs_predictions else None
    if previous is not None:
        take_predictions(*previous)
    if not sums:
        raise ValueError(
            "The evaluation produced no batches: the batches given were empty (an evaluation "
            "split with no image?)."
        )
    loss_sum = num_valid = 0.0
    for batch_loss, batch_valid, confusion in jax.device_get(sums):
        loss_sum += float(batch_loss)
        num_valid += float(batch_valid)
        evaluator.add_confusion(confusion)
    if per_image and jax.process_count() > 1:
        # Every host gets every host's per-image results, so the metrics agree everywhere.
        ids, lists = _gather_per_image(evaluator, slots)
        evaluator.ids, evaluator.per_image = [], {key: [] for key in PER_IMAGE_KEYS}
        evaluator.extend(ids, lists)
    found = evaluation_of(evaluator, per_image=per_image, predictions=kept)
    found.metrics["loss"] = loss_sum / max(num_valid, 1.0)
    found.metrics["num_images"] = num_valid
    return found


def evaluation_of(
    evaluator: SegmentationEvaluator,
    *,
    per_image: bool = True,
    predictions: Mapping[str, np.ndarray] | None = None,
) -> Evaluation:
    """What an evaluator accumulated over a split, as every scoring path reports it.

    The compiled evaluation of a checkpoint (`evaluate`) and the scoring of predictions
    (`bts_jax.inference.scoring`) both end here, so their metrics and per-image rows have one
    form: floats, rows sorted by `bts_jax.data.sources.id_sort_key`.

    Args:
      evaluator: the filled evaluator.
      per_image: it holds per-image metrics (else only the confusion-matrix ones are reported).
      predictions: id -> predicted class map kept for drawing.

    Returns:
      The `Evaluation`.
    """
    result = evaluator.result() if per_image else metrics_from_confusion(evaluator.confusion)
    rows = sorted(evaluator.per_image_rows(), key=lambda row: id_sort_key(str(row["id"])))
    return Evaluation(
        metrics={key: float(value) for key, value in result.items()},
        per_image=rows if per_image else [],
        predictions=dict(predictions or {}),
    )


# Columns of per_image_<split>.csv: the image, then the evaluator's per-image numbers (HD95 in
# pixels and in millimetres); emptiness is implied by the pixel counts.
PER_IMAGE_COLUMNS = (
    "id",
    "tumour_type",
    *(key for key in PER_IMAGE_KEYS if key not in ("gt_empty", "pred_empty")),
)


def write_evaluation(
    found: Evaluation,
    workdir: str | os.PathLike,
    split: str,
    labels: Mapping[str, int],
    *,
    step: int | None = None,
    record: Mapping[str, Any] | None = None,
) -> tuple[str, str | None]:
    """Writes ``eval_<split>.json`` (metrics) and ``per_image_<split>.csv`` (one row per image).

    Every evaluation file is written here: the end of training, ``evaluate.py``, the scoring of
    prediction settings and of labelled folders, and a sweep's cells.

    Undefined values (NaN: e.g. HD95 with one mask empty, precision with nothing predicted) are
    written as JSON ``null`` and as an empty CSV cell.

    Args:
      found: the result of `evaluate` (or of `bts_jax.inference.scoring`).
      workdir: the run's directory.
      split: the split's name (with a settings tag, ``folder`` or ``external_test``).
      labels: id -> tumour type label (index into `bts_jax.data.TUMOUR_TYPES`).
      step: the scored checkpoint's step, written as ``step``.
      record: more entries of the JSON: where the images came from, how they were predicted.

    Returns:
      The two paths (the CSV's is None when there are no per-image rows).
    """
    workdir = os.fspath(workdir)
    json_path = os.path.join(workdir, eval_file(split))
    content = dict(found.metrics)
    if step is not None:
        content["step"] = int(step)
    content.update(record or {})
    jsonio.write_json(json_path, content, indent=2, sort_keys=True)
    if not found.per_image:
        return json_path, None
    csv_path = os.path.join(workdir, per_image_file(split))
    with open(csv_path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(PER_IMAGE_COLUMNS)
        for row in found.per_image:
            image_id = str(row["id"])
            values = {**row, "tumour_type": TUMOUR_TYPES[labels.get(image_id, 0)]}
            out.writerow(["" if _is_nan(values[c]) else values[c] for c in PER_IMAGE_COLUMNS])
    return json_path, csv_path


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
