"""One evaluation path: the same model on the same data gives the same metric files, whoever scores.

A split: the end of training and ``evaluate.py`` (and the plain predictions of
`bts_jax.inference.scoring`). A labelled folder at each image's own size: ``evaluate.py
--data_dir``, a sweep's test folder and the held-out benchmark.
"""

import csv
import json
import math
import os
import shutil
import types

import heldout_quickstart
import numpy as np
import pytest

from bts_jax import data as data_lib
from bts_jax import evaluation, inference
from bts_jax.experiments import cells
from bts_jax.experiments.sweeps import EXTERNAL_TEST, Cell
from bts_jax.inference import scoring
from bts_jax.workdir.layout import eval_file, per_image_file

# What a file says about where its numbers came from, beside the numbers.
PROVENANCE = {"prediction", "test_folder", "test_heldout_fraction", "test_data"}


def _metrics(path) -> dict:
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if k not in PROVENANCE}


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _undefined(value) -> bool:
    # NaN in memory, null in a file.
    return value is None or (isinstance(value, float) and math.isnan(value))


def assert_same_metrics(found: dict, expected: dict, keys=None) -> None:
    """Equal keys (or ``keys``), equal values up to float32 rounding; None (NaN) where expected."""
    if keys is None:
        assert sorted(found) == sorted(expected)
        keys = sorted(expected)
    for key in keys:
        if _undefined(expected[key]):
            assert _undefined(found[key]), key
        else:
            np.testing.assert_allclose(found[key], expected[key], rtol=1e-6, err_msg=key)


def assert_same_rows(found: list[dict], expected: list[dict]) -> None:
    """The same images in the same order, with the same columns and numbers."""
    assert [r["id"] for r in found] == [r["id"] for r in expected]
    assert [list(r) for r in found] == [list(r) for r in expected]
    for a, b in zip(found, expected, strict=True):
        for column, value in b.items():
            if value == "" or column in ("id", "tumour_type"):
                assert a[column] == value, column
            else:
                np.testing.assert_allclose(float(a[column]), float(value), rtol=1e-6)


@pytest.mark.slow
def test_training_and_evaluate_write_the_same_split_files(trained_workdir_copy, tmp_path):
    workdir = trained_workdir_copy
    json_name, csv_name = eval_file("validation"), per_image_file("validation")
    at_training = _metrics(os.path.join(workdir, json_name))
    rows_at_training = _rows(os.path.join(workdir, csv_name))
    os.remove(os.path.join(workdir, json_name))
    os.remove(os.path.join(workdir, csv_name))
    # What evaluate.py calls for one model on a split.
    metrics, json_path = scoring.score_split([workdir], "validation")
    assert json_path == os.path.join(workdir, json_name)
    assert_same_metrics(_metrics(json_path), at_training)
    assert_same_metrics(metrics, at_training)
    assert_same_rows(_rows(os.path.join(workdir, csv_name)), rows_at_training)
    # The prediction stack's plain predictions (evaluate.py --output_dir): the same numbers,
    # without the loss an ensemble could not have.
    metrics, json_path = scoring.score_split(
        [workdir], "validation", settings=inference.PredictionSettings(), output_dir=tmp_path
    )
    assert os.path.basename(json_path) == eval_file("validation_plain")
    predicted = _metrics(json_path)
    assert set(predicted) == set(at_training) - {"loss", "step"}
    assert_same_metrics(predicted, at_training, keys=sorted(predicted))
    assert_same_rows(_rows(tmp_path / per_image_file("validation_plain")), rows_at_training)


@pytest.mark.slow
def test_evaluate_sweeps_and_heldout_score_a_folder_alike(trained_workdir_copy, tmp_path):
    workdir = trained_workdir_copy
    folder = tmp_path / "labelled"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for image_id in ("10", "11", "1203"):  # two 512x512 slices and one 256x256
            shutil.copy(os.path.join(data_lib.SAMPLE_DIR, sub, f"{image_id}.png"), folder / sub)
    examples = scoring.folder_examples(folder)
    # evaluate.py --data_dir
    settings = inference.PredictionSettings()
    record = {"prediction": scoring.prediction_record([workdir], "best", settings)}
    _, by_evaluate = scoring.score_examples(
        [workdir], examples, tmp_path / "out", "folder_plain", record=record
    )
    # A sweep's test folder.
    cell = Cell("paper", 0, None, workdir)
    sweep = types.SimpleNamespace(test_folder=str(folder), test_heldout_fraction=0.0)
    by_sweep = cells.score_on_test_folder(cell, sweep, examples)
    assert by_sweep == os.path.join(workdir, eval_file(EXTERNAL_TEST))
    assert_same_metrics(_metrics(by_sweep), _metrics(by_evaluate))
    with open(by_sweep) as f:
        assert json.load(f)["test_folder"] == str(folder)
    assert_same_rows(
        _rows(os.path.join(workdir, per_image_file(EXTERNAL_TEST))),
        _rows(tmp_path / "out" / per_image_file("folder_plain")),
    )
    # The held-out benchmark prints the same numbers.
    result, dice = heldout_quickstart.score(workdir, list(examples), batch_size=8)
    written = _metrics(by_evaluate)
    assert_same_metrics(result, written, keys=sorted(set(written) - {"step"}))
    rows = _rows(tmp_path / "out" / per_image_file("folder_plain"))
    np.testing.assert_allclose(dice, [float(r["dice"]) for r in rows], rtol=1e-6)


def test_evaluation_of_reports_floats_and_rows_sorted_by_id():
    evaluator = evaluation.SegmentationEvaluator(1)
    masks = np.zeros((2, 8, 8), np.int32)
    masks[0, 2:5, 2:5] = 1
    truths = masks.copy()
    confusion = evaluation.confusion_matrix(masks, truths, 1)
    evaluator.update(confusion, masks, truths, ids=["10", "9"])
    found = evaluation.evaluation_of(evaluator)
    assert [row["id"] for row in found.per_image] == ["9", "10"]
    assert all(isinstance(v, float) for v in found.metrics.values())
    assert found.metrics["dice"] == 1.0 and found.predictions == {}
    counts = evaluation.evaluation_of(evaluator, per_image=False)
    assert counts.per_image == [] and "hd95_px" not in counts.metrics


def test_write_evaluation_adds_the_step_and_the_record(tmp_path):
    found = evaluation.Evaluation(metrics={"dice": 0.5}, per_image=[], predictions={})
    json_path, csv_path = evaluation.write_evaluation(
        found, tmp_path, "x", {}, step=7, record={"prediction": {"tta": "none"}}
    )
    with open(json_path) as f:
        assert json.load(f) == {"dice": 0.5, "step": 7, "prediction": {"tta": "none"}}
    assert csv_path is None and found.metrics == {"dice": 0.5}
