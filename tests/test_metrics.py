import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax import evaluation
from bts_jax.evaluation import per_image

_confusion_jit = jax.jit(evaluation.confusion_matrix, static_argnames="num_classes")


def _square(shape, top, left, height, width=None):
    mask = np.zeros(shape, np.int32)
    mask[top : top + height, left : left + (height if width is None else width)] = 1
    return mask


# ---------------------------------------------------------------------------------------------
# Confusion matrix and split-level metrics


def test_predictions_from_logits():
    binary = jnp.array([[[[1.5], [0.0], [-0.1]]]])  # logit 0 = probability 0.5: not > 0.5
    np.testing.assert_array_equal(evaluation.predictions_from_logits(binary), [[[1, 0, 0]]])
    multi = jnp.array([[[[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]]]])
    out = evaluation.predictions_from_logits(multi)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, [[[1, 0, 2]]])


def test_confusion_of_two_squares_closed_form():
    # 10x10 image; truth = 4x4 square, prediction = the same square shifted right by 1.
    gt = _square((10, 10), 2, 2, 4)[None]
    pred = _square((10, 10), 2, 3, 4)[None]
    cm = _confusion_jit(jnp.asarray(pred), jnp.asarray(gt), num_classes=1)
    assert cm.dtype == jnp.int32 and cm.shape == (2, 2)
    # tp = 4 * 3 overlap, fp = fn = 4 (one column each), tn = 100 - 20.
    np.testing.assert_array_equal(cm, [[80, 4], [4, 12]])
    m = evaluation.metrics_from_confusion(cm)
    assert m["iou_tumour"] == pytest.approx(12 / 20)
    assert m["iou_background"] == pytest.approx(80 / 88)
    assert m["miou"] == pytest.approx((12 / 20 + 80 / 88) / 2)
    assert m["dice"] == pytest.approx(24 / 32)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["pixel_accuracy"] == pytest.approx(92 / 100)


def test_prediction_inside_truth_precision_one_recall_half():
    gt = _square((8, 8), 1, 1, 4, 6)[None]  # 24 pixels
    pred = _square((8, 8), 1, 1, 4, 3)[None]  # its left half, 12 pixels
    m = evaluation.metrics_from_confusion(_confusion_jit(pred, gt, num_classes=1))
    assert m["precision"] == 1.0
    assert m["recall"] == 0.5
    assert m["iou_tumour"] == 0.5
    assert m["dice"] == pytest.approx(2 * 12 / 36)


def test_absent_class_is_nan_and_left_out_of_miou():
    # Three classes; class 2 appears neither in truth nor prediction.
    gt = np.array([[[0, 0, 1, 1]]], np.int32)
    pred = np.array([[[0, 1, 1, 1]]], np.int32)
    cm = _confusion_jit(pred, gt, num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    m = evaluation.metrics_from_confusion(cm)
    assert set(m) >= {"iou_class_0", "iou_class_1", "iou_class_2", "miou"}
    assert math.isnan(m["iou_class_2"])
    assert m["iou_class_0"] == pytest.approx(0.5)
    assert m["iou_class_1"] == pytest.approx(2 / 3)
    assert m["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    # Binary split without any tumour, none predicted: tumour IoU and Dice undefined.
    m2 = evaluation.metrics_from_confusion(np.array([[50, 0], [0, 0]]))
    assert math.isnan(m2["iou_tumour"]) and math.isnan(m2["dice"])
    assert m2["miou"] == 1.0
    assert math.isnan(evaluation.metrics_from_confusion(np.zeros((2, 2)))["miou"])


def test_confusion_ignores_invalid_examples_and_out_of_range_labels():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, size=(3, 6, 5)).astype(np.int32)
    gt = rng.integers(0, 2, size=(3, 6, 5)).astype(np.int32)
    ref = _confusion_jit(pred[:2], gt[:2], num_classes=1)
    padded = _confusion_jit(pred, gt, num_classes=1, valid=jnp.array([True, True, False]))
    np.testing.assert_array_equal(padded, ref)
    assert int(padded.sum()) == 2 * 6 * 5
    gt_ignore = gt.copy()
    gt_ignore[0, 0, :] = 255
    cm = _confusion_jit(pred, gt_ignore, num_classes=1)
    assert int(cm.sum()) == 3 * 6 * 5 - 5


def test_confusion_jit_equals_eager_and_numpy():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 4, size=(2, 7, 9)).astype(np.int32)
    gt = rng.integers(0, 4, size=(2, 7, 9)).astype(np.int32)
    valid = np.array([True, False])
    eager = evaluation.confusion_matrix(jnp.asarray(pred), jnp.asarray(gt), 4, jnp.asarray(valid))
    jitted = _confusion_jit(pred, gt, num_classes=4, valid=valid)
    expected = np.zeros((4, 4), np.int64)
    np.add.at(expected, (gt[0].ravel(), pred[0].ravel()), 1)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(jitted, expected)


@pytest.mark.slow
def test_sharded_loss_and_confusion_equal_single_device():
    # Fake CPU devices must be set before JAX starts, hence a fresh interpreter.
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_num_cpu_devices", 4)
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        assert jax.device_count() == 4
        from bts_jax import evaluation
        from bts_jax.train import losses
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(8, 16, 16, 1)).astype(np.float32)
        labels = rng.integers(0, 2, size=(8, 16, 16)).astype(np.int32)
        valid = np.arange(8) < 6
        def step(x, y, v):
            loss, _ = losses.segmentation_loss(x, y, v)
            cm = evaluation.confusion_matrix(evaluation.predictions_from_logits(x), y, 1, v)
            return loss, cm
        mesh = Mesh(np.array(jax.devices()), ("data",))
        shard = NamedSharding(mesh, P("data"))
        args = [jax.device_put(a, shard) for a in (logits, labels, valid)]
        loss_s, cm_s = jax.jit(step)(*args)
        loss_1, cm_1 = jax.jit(step)(logits, labels, valid)
        np.testing.assert_allclose(float(loss_s), float(loss_1), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(cm_s), np.asarray(cm_1))
        print("OK")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Per-image metrics


def test_dice_per_image_and_empty_rules():
    gt = _square((10, 10), 2, 2, 4)
    pred = _square((10, 10), 2, 3, 4)
    assert evaluation.dice_per_image(pred, gt) == pytest.approx(24 / 32)
    empty = np.zeros((10, 10), np.int32)
    assert evaluation.dice_per_image(empty, empty) == 1.0
    assert evaluation.dice_per_image(empty, gt) == 0.0
    assert evaluation.dice_per_image(pred, empty) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("axis", [0, 1])
def test_hd95_of_shifted_square_is_the_shift(k, axis):
    gt = _square((32, 32), 8, 8, 10)
    pred = np.roll(gt, k, axis=axis)
    assert evaluation.hd95(pred, gt) == pytest.approx(k)
    assert evaluation.hd95(gt, pred) == pytest.approx(k)
    assert evaluation.hd95(pred, gt, spacing=0.5) == pytest.approx(0.5 * k)


def test_hd95_anisotropic_spacing_and_single_pixels():
    gt = _square((32, 32), 8, 8, 10)
    pred = np.roll(gt, 2, axis=1)  # shifted along x, where a pixel is 3 units wide
    assert evaluation.hd95(pred, gt, spacing=(1.0, 3.0)) == pytest.approx(6.0)
    a = np.zeros((20, 20), np.int32)
    b = np.zeros((20, 20), np.int32)
    a[2, 3] = 1
    b[5, 7] = 1  # a 3-4-5 triangle away
    assert evaluation.hd95(a, b) == pytest.approx(5.0)
    assert evaluation.hd95(a, a) == 0.0


def test_hd95_empty_rules():
    empty = np.zeros((30, 40), np.int32)
    gt = _square((30, 40), 5, 5, 6)
    assert evaluation.hd95(empty, empty) == 0.0
    assert evaluation.hd95(empty, gt) == pytest.approx(50.0)  # diagonal of 30x40
    assert evaluation.hd95(gt, empty, spacing=0.5) == pytest.approx(25.0)


def test_boundary_iou_hand_computed():
    # 20x20 image: d = max(1, round(0.02 * 28.3)) = 1, so each band is the one-pixel contour.
    assert per_image.boundary_dilation((20, 20)) == 1
    assert per_image.boundary_dilation((512, 512)) == 14
    gt = _square((20, 20), 5, 5, 5)  # ring of 16 pixels
    pred = _square((20, 20), 5, 6, 5)  # shifted right by 1: shares 4 + 4 pixels of top/bottom row
    band = per_image.boundary_region(gt, 1)
    assert band.sum() == 16 and not band[6:9, 6:9].any()
    assert evaluation.boundary_iou(pred, gt) == pytest.approx(8 / 24)


def test_boundary_iou_identical_disjoint_empty():
    gt = _square((64, 64), 10, 10, 30)
    assert evaluation.boundary_iou(gt, gt) == 1.0
    far = _square((64, 64), 45, 45, 10)
    assert evaluation.boundary_iou(far, gt) == 0.0
    empty = np.zeros((64, 64), np.int32)
    assert evaluation.boundary_iou(empty, empty) == 1.0
    assert evaluation.boundary_iou(empty, gt) == 0.0
    # A band wider than half the object covers it whole: Boundary IoU equals mask IoU.
    small_a = _square((64, 64), 20, 20, 4)
    small_b = _square((64, 64), 20, 21, 4)
    assert evaluation.boundary_iou(small_a, small_b, dilation_ratio=0.05) == pytest.approx(12 / 20)


def test_mask_touching_the_image_border_has_a_contour():
    gt = _square((16, 16), 0, 0, 4)  # touches the top-left corner
    assert per_image.boundary_region(gt, 1).sum() == 4 * 4 - 2 * 2
    assert evaluation.hd95(np.roll(gt, 1, axis=1), gt) == pytest.approx(1.0)


def test_pixel_spacing_mm():
    assert evaluation.pixel_spacing_mm(512) == pytest.approx(0.49)
    assert evaluation.pixel_spacing_mm(256) == pytest.approx(0.98)
    with pytest.raises(ValueError):
        evaluation.pixel_spacing_mm(0)


# ---------------------------------------------------------------------------------------------
# Evaluator


def _batch_of_cases(size=32):
    """Five cases: shifted squares, a missed tumour, a false tumour, both empty."""
    gt, pred = [], []
    base = _square((size, size), 8, 8, 10)
    gt.append(base)
    pred.append(np.roll(base, 2, axis=1))
    gt.append(_square((size, size), 4, 10, 6, 12))
    pred.append(_square((size, size), 5, 10, 6, 12))
    gt.append(base)
    pred.append(np.zeros_like(base))  # missed tumour
    gt.append(np.zeros_like(base))
    pred.append(_square((size, size), 20, 20, 3))  # false tumour
    gt.append(np.zeros_like(base))
    pred.append(np.zeros_like(base))  # both empty
    return np.stack(pred), np.stack(gt)


def test_evaluator_known_values():
    preds, gts = _batch_of_cases()
    ev = evaluation.SegmentationEvaluator(num_classes=1)
    ev.update(_confusion_jit(preds, gts, num_classes=1), preds, gts)
    r = ev.result()
    diag = math.hypot(32, 32)
    assert r["num_images"] == 5
    assert (r["num_both_empty"], r["num_pred_empty_only"], r["num_gt_empty_only"]) == (1, 1, 1)
    assert r["hd95_px"] == pytest.approx((2 + 1 + diag + diag + 0) / 5)
    assert r["hd95_mm"] == pytest.approx(r["hd95_px"] * 0.49 * 16)  # spacing at 32 px
    assert r["dice_per_image"] == pytest.approx((0.8 + 10 / 12 + 0 + 0 + 1) / 5)
    assert 0 < r["boundary_iou"] < 1
    np.testing.assert_allclose(ev.per_image["boundary_iou"][2:], [0.0, 0.0, 1.0])
    # Split-level metrics come from the summed confusion matrix.
    tp = 80 + 60
    fp = 20 + 12 + 9
    fn = 20 + 12 + 100
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["precision"] == pytest.approx(tp / (tp + fp))
    assert r["recall"] == pytest.approx(tp / (tp + fn))


def test_evaluator_several_batches_equal_one_big_batch_with_padding():
    preds, gts = _batch_of_cases()
    one = evaluation.SegmentationEvaluator(num_classes=1, pixel_spacing_mm=0.7)
    one.update(_confusion_jit(preds, gts, num_classes=1), preds, gts)

    many = evaluation.SegmentationEvaluator(num_classes=1, pixel_spacing_mm=0.7)
    for start in (0, 2, 4):
        p, g = preds[start : start + 2], gts[start : start + 2]
        valid = np.ones(2, bool)
        if len(p) < 2:  # pad the last batch with garbage marked invalid, like the eval loop
            p = np.concatenate([p, np.ones_like(p)])
            g = np.concatenate([g, np.zeros_like(g)])
            valid = np.array([True, False])
        cm = _confusion_jit(p, g, num_classes=1, valid=valid)
        many.update(cm, p, g, valid)
    assert many.confusion.dtype == np.int64
    np.testing.assert_array_equal(many.confusion, one.confusion)
    r_one, r_many = one.result(), many.result()
    assert r_one.keys() == r_many.keys()
    for key in r_one:
        np.testing.assert_allclose(r_many[key], r_one[key], rtol=1e-12, err_msg=key)
    assert r_one["hd95_mm"] == pytest.approx(0.7 * r_one["hd95_px"])
    many.reset()
    assert many.result()["num_images"] == 0 and math.isnan(many.result()["dice_per_image"])


def test_evaluator_multiclass_uses_any_tumour_class_as_foreground():
    gt = np.zeros((1, 16, 16), np.int32)
    gt[0, 2:6, 2:6] = 1
    gt[0, 8:12, 8:12] = 2
    pred = gt.copy()
    pred[0, 8:12, 8:12] = 1  # right place, wrong tumour class
    ev = evaluation.SegmentationEvaluator(num_classes=3)
    ev.update(_confusion_jit(pred, gt, num_classes=3), pred, gt)
    r = ev.result()
    assert r["dice_per_image"] == 1.0 and r["hd95_px"] == 0.0 and r["boundary_iou"] == 1.0
    assert r["dice"] == 1.0  # foreground vs background
    assert r["iou_class_2"] == 0.0
    assert r["iou_class_1"] == pytest.approx(16 / 32)
