"""evaluate() over a split and the files it writes: per-image rows, strict JSON, CSV."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax import evaluation, jsonio
from bts_jax.sharding import make_mesh


def _batches():
    """Two host batches of 4 (32x32): the last one padded with an invalid entry."""
    rng = np.random.default_rng(0)
    batches = []
    for start in (0, 4):
        masks = np.zeros((4, 32, 32), np.int32)
        for k in range(4):
            masks[k, 4 + k : 12 + k, 6:14] = 1
        images = rng.random((4, 32, 32, 1)).astype(np.float32)
        ids = np.array([str(start + k + 1) for k in range(4)])
        valid = np.ones(4, bool)
        if start:
            valid[-1] = False
            ids[-1] = ""
        batches.append({"image": images, "mask": masks, "valid": valid, "id": ids})
    return batches


def _prediction(batch):
    # A fixed "model": the truth shifted by one row, so every metric is known and imperfect.
    return jnp.roll(batch["mask"], 1, axis=1).astype(jnp.uint8)


@jax.jit
def _eval_fn(state, batch):
    del state
    predictions = _prediction(batch)
    num_valid = jnp.sum(batch["valid"]).astype(jnp.float32)
    return {
        "loss_sum": 0.5 * num_valid,
        "num_valid": num_valid,
        "confusion": evaluation.confusion_matrix(predictions, batch["mask"], 1, batch["valid"]),
        "predictions": predictions,
    }


def test_per_image_rows_match_the_evaluator_on_the_valid_images():
    mesh = make_mesh(jax.devices()[:4])
    found = evaluation.evaluate(
        _eval_fn, None, _batches(), mesh, num_classes=1, keep_ids=["2", "7", "nope"]
    )
    assert [row["id"] for row in found.per_image] == [str(i) for i in range(1, 8)]
    assert found.metrics["num_images"] == 7 and found.metrics["loss"] == pytest.approx(0.5)
    reference = evaluation.SegmentationEvaluator(1)
    for batch in _batches():
        prediction = np.asarray(_prediction(batch))
        cm = evaluation.confusion_matrix(prediction, batch["mask"], 1, batch["valid"])
        reference.update(cm, prediction, batch["mask"], batch["valid"], batch["id"])
    expected = reference.result()
    for key, value in expected.items():
        assert found.metrics[key] == pytest.approx(value), key
    row = found.per_image[0]
    assert row["truth_pixels"] == 64 and row["pred_pixels"] == 64
    assert row["dice"] == pytest.approx(56 / 64) and row["iou"] == pytest.approx(56 / 72)
    assert sorted(found.predictions) == ["2", "7"]
    np.testing.assert_array_equal(found.predictions["2"], _prediction(_batches()[0])[1])


def test_counts_only_evaluation_needs_no_predictions():
    mesh = make_mesh(jax.devices()[:4])

    def counts_fn(state, batch):
        out = dict(_eval_fn(state, batch))
        del out["predictions"]
        return out

    found = evaluation.evaluate(counts_fn, None, _batches(), mesh, num_classes=1, per_image=False)
    full = evaluation.evaluate(_eval_fn, None, _batches(), mesh, num_classes=1)
    assert found.per_image == []
    assert found.metrics["miou"] == pytest.approx(full.metrics["miou"])
    assert "hd95_mm" not in found.metrics
    with pytest.raises(ValueError, match="with_predictions=True"):
        evaluation.evaluate(counts_fn, None, _batches(), mesh, num_classes=1)
    with pytest.raises(ValueError, match="no batches"):
        evaluation.evaluate(_eval_fn, None, [], mesh, num_classes=1)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def test_written_files_use_null_for_undefined_values(tmp_path):
    found = evaluation.Evaluation(
        metrics={"miou": 0.5, "precision": float("nan"), "hd95_mm": float("inf"), "step": 3},
        per_image=[
            {"id": "9", **dict.fromkeys(evaluation.PER_IMAGE_KEYS, 1)},
            {"id": "10", **dict.fromkeys(evaluation.PER_IMAGE_KEYS, float("nan"))},
        ],
        predictions={},
    )
    json_path, csv_path = evaluation.write_evaluation(found, tmp_path, "test", {"9": 2})
    saved = _strict_json(json_path)
    assert saved == {"miou": 0.5, "precision": None, "hd95_mm": None, "step": 3}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(evaluation.PER_IMAGE_COLUMNS)
    assert rows[0]["tumour_type"] == "glioma" and rows[1]["tumour_type"] == "unknown"
    assert rows[1]["dice"] == "" and rows[1]["hd95_px"] == ""
    assert jsonio.dumps([float("nan"), {"a": -float("inf")}]) == '[null, {"a": null}]'
