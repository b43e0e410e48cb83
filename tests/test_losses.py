import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax.train import losses as _losses


class _Jitted:
    # Eager JAX compiles every primitive separately, which makes small tests slow; jitting each
    # public loss compiles it once per shape and also checks that it is jittable.
    sigmoid_binary_cross_entropy = staticmethod(jax.jit(_losses.sigmoid_binary_cross_entropy))
    softmax_cross_entropy = staticmethod(jax.jit(_losses.softmax_cross_entropy))
    soft_dice_loss = staticmethod(jax.jit(_losses.soft_dice_loss, static_argnames="smooth"))
    segmentation_loss = staticmethod(
        jax.jit(_losses.segmentation_loss, static_argnames=("bce_weight", "dice_weight"))
    )


losses = _Jitted


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# One 1x2x2 image, one logit channel, labels written out by hand.
LOGITS_1 = np.array([[[[2.0], [-1.0]], [[0.0], [3.0]]]], np.float32)  # (1, 2, 2, 1)
LABELS_1 = np.array([[[1, 0], [1, 0]]], np.int32)  # (1, 2, 2)


def test_bce_hand_computed():
    # -log(sigmoid(2)), -log(1 - sigmoid(-1)), -log(sigmoid(0)), -log(1 - sigmoid(3))
    expected = np.mean(
        [
            math.log1p(math.exp(-2.0)),
            math.log1p(math.exp(-1.0)),
            math.log(2.0),
            math.log1p(math.exp(3.0)),
        ]
    )
    got = losses.sigmoid_binary_cross_entropy(jnp.asarray(LOGITS_1), jnp.asarray(LABELS_1))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_bce_is_stable_for_huge_logits():
    logits = jnp.array([[[[1e4], [-1e4]]]], jnp.float32)
    labels = jnp.array([[[1, 0]]], jnp.int32)
    assert float(losses.sigmoid_binary_cross_entropy(logits, labels)) == pytest.approx(0.0)
    wrong = jnp.array([[[0, 1]]], jnp.int32)
    np.testing.assert_allclose(
        float(losses.sigmoid_binary_cross_entropy(logits, wrong)), 1e4, rtol=1e-6
    )


def test_softmax_ce_hand_computed():
    logits = np.array([[[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]], np.float32)  # (1, 1, 2, 3)
    labels = np.array([[[1, 2]]], np.int32)
    lse = math.log(math.exp(1.0) + math.exp(2.0) + 1.0)
    expected = ((lse - 2.0) + math.log(3.0)) / 2
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_soft_dice_binary_hand_computed():
    p = _np_sigmoid(LOGITS_1[..., 0])
    g = LABELS_1.astype(np.float64)
    expected = 1.0 - (2 * np.sum(p * g) + 1.0) / (np.sum(p) + np.sum(g) + 1.0)
    got = losses.soft_dice_loss(jnp.asarray(LOGITS_1), jnp.asarray(LABELS_1))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_soft_dice_multiclass_hand_computed():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 3, 4)).astype(np.int32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    g = np.eye(3)[labels]
    dice = [
        (2 * np.sum(p[..., k] * g[..., k]) + 1) / (p[..., k].sum() + g[..., k].sum() + 1)
        for k in range(3)
    ]
    got = losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), 1.0 - np.mean(dice), rtol=1e-5)


def test_all_background_masks_known_values():
    # Logits 0 everywhere: p = 0.5 on 2 * 4 * 4 = 32 pixels, no foreground at all.
    logits = jnp.zeros((2, 4, 4, 1), jnp.float32)
    labels = jnp.zeros((2, 4, 4), jnp.int32)
    np.testing.assert_allclose(
        float(losses.sigmoid_binary_cross_entropy(logits, labels)), math.log(2.0), rtol=1e-6
    )
    # 1 - s / (sum(p) + sum(g) + s) = 1 - 1 / (16 + 0 + 1)
    np.testing.assert_allclose(
        float(losses.soft_dice_loss(logits, labels)), 1.0 - 1.0 / 17.0, rtol=1e-6
    )
    # A confident background prediction on an empty mask costs (almost) nothing.
    confident = jnp.full((2, 4, 4, 1), -20.0, jnp.float32)
    loss, parts = losses.segmentation_loss(confident, labels)
    assert float(parts["dice_loss"]) < 1e-6
    assert float(loss) < 1e-6


def test_perfect_prediction_dice_near_zero():
    labels = np.zeros((2, 8, 8), np.int32)
    labels[0, 2:5, 2:6] = 1
    labels[1, 4:8, 0:3] = 1
    logits = np.where(labels[..., None] == 1, 30.0, -30.0).astype(np.float32)
    got = losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(0.0, abs=1e-6)
    # The same for three classes with softmax.
    labels3 = labels.copy()
    labels3[1, 0:2, 5:8] = 2
    logits3 = np.where(np.eye(3)[labels3] == 1, 30.0, -30.0).astype(np.float32)
    got3 = losses.soft_dice_loss(jnp.asarray(logits3), jnp.asarray(labels3))
    assert float(got3) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_valid_mask_excludes_padded_examples(num_classes):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 6, num_classes)).astype(np.float32)
    labels = rng.integers(0, max(num_classes, 2), size=(3, 5, 6)).astype(np.int32)
    # Pad with two garbage examples, marked invalid.
    pad_logits = np.concatenate([logits, 50 * rng.normal(size=(2, 5, 6, num_classes))], 0)
    pad_labels = np.concatenate([labels, np.ones((2, 5, 6), np.int32)], 0)
    valid = np.array([True, True, True, False, False])
    loss_ref, parts_ref = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
    loss_pad, parts_pad = losses.segmentation_loss(
        jnp.asarray(pad_logits, jnp.float32), jnp.asarray(pad_labels), jnp.asarray(valid)
    )
    np.testing.assert_allclose(float(loss_pad), float(loss_ref), rtol=1e-6)
    for key in parts_ref:
        np.testing.assert_allclose(float(parts_pad[key]), float(parts_ref[key]), rtol=1e-6)


def test_all_padding_gives_zero_not_nan():
    logits = jnp.ones((2, 3, 3, 1))
    labels = jnp.ones((2, 3, 3), jnp.int32)
    loss, parts = losses.segmentation_loss(logits, labels, jnp.zeros((2,), bool))
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in parts.values())


@pytest.mark.parametrize("num_classes", [1, 2])
def test_bfloat16_logits_give_float32_loss(num_classes):
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, num_classes)), jnp.bfloat16)
    labels = jnp.asarray(rng.integers(0, 2, size=(2, 4, 4)), jnp.int32)
    loss, parts = losses.segmentation_loss(logits, labels)
    assert loss.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in parts.values())
    # The float32 loss of the bfloat16 logits equals the loss of the same values in float32.
    loss32, _ = losses.segmentation_loss(logits.astype(jnp.float32), labels)
    np.testing.assert_allclose(float(loss), float(loss32), rtol=1e-6)
    grads = jax.jit(jax.grad(lambda x: _losses.segmentation_loss(x, labels)[0]))(logits)
    assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


def test_weights_and_jit():
    logits = jnp.asarray(LOGITS_1)
    labels = jnp.asarray(LABELS_1)
    valid = jnp.array([True])
    fn = jax.jit(
        lambda x, y, v: _losses.segmentation_loss(x, y, v, bce_weight=0.5, dice_weight=2.0)
    )
    loss, parts = fn(logits, labels, valid)
    bce = losses.sigmoid_binary_cross_entropy(logits, labels)
    dice = losses.soft_dice_loss(logits, labels)
    np.testing.assert_allclose(float(loss), 0.5 * float(bce) + 2.0 * float(dice), rtol=1e-6)
    np.testing.assert_allclose(float(parts["cross_entropy"]), float(bce), rtol=1e-6)
    np.testing.assert_allclose(float(parts["dice_loss"]), float(dice), rtol=1e-6)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="labels must be"):
        _losses.segmentation_loss(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 1), jnp.int32))
    with pytest.raises(ValueError, match="one logit channel"):
        _losses.sigmoid_binary_cross_entropy(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4), int))
