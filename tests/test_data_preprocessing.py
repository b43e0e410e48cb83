"""Resize/pad, mask binarisation, augmentations and the inference helpers."""

import os

import ml_collections
import numpy as np
import pytest

from bts_jax.configs import default
from bts_jax.data import (
    SAMPLE_DIR,
    augment_pair,
    content_box,
    equalize_histogram,
    load_grayscale,
    preprocess_image,
    restore_original_size,
)
from bts_jax.data._tf import tf
from bts_jax.data.preprocessing import preprocess_pair


def _data_config(**overrides):
    data = default.get_config().data
    data.update(overrides)
    return data


def _augment(**switches):
    aug = ml_collections.ConfigDict(default.get_config().data.augment.to_dict())
    for name in ("flip", "rot90", "affine", "brightness_contrast"):
        aug[name] = False
    aug.update(switches)
    return aug


def test_preprocess_pair_resize_binarises_mask_and_equalises_first():
    image = load_grayscale(os.path.join(SAMPLE_DIR, "images", "1203.png"))  # 256x256
    mask = load_grayscale(os.path.join(SAMPLE_DIR, "masks", "1203.png"))
    mask[0, 0] = 100  # not tumour (<= 127)
    mask[0, 1] = 128  # tumour
    data = _data_config(image_size=256)
    out_image, out_mask = preprocess_pair(tf.constant(image), tf.constant(mask), data)
    # Same size: the resize must be the identity, so this is exactly OpenCV's equalisation.
    np.testing.assert_array_equal(out_image.numpy()[..., 0], equalize_histogram(image).numpy())
    np.testing.assert_array_equal(out_mask.numpy()[..., 0], (mask > 127).astype(np.uint8))
    small_image, small_mask = preprocess_pair(
        tf.constant(image), tf.constant(mask), _data_config(image_size=64)
    )
    assert small_image.shape == (64, 64, 1) and small_image.dtype == tf.uint8
    assert small_mask.shape == (64, 64, 1) and set(np.unique(small_mask.numpy())) <= {0, 1}
    big_image, _ = preprocess_pair(tf.constant(image), None, _data_config(image_size=512))
    assert big_image.shape == (512, 512, 1)


def test_pad_mode_keeps_native_pixels_and_restores():
    image = load_grayscale(os.path.join(SAMPLE_DIR, "images", "1204.png"))  # 256x256
    data = _data_config(image_size=512, resize_method="pad")
    out = preprocess_image(image, data)
    assert out.shape == (512, 512, 1) and out.dtype == np.float32
    top, left, h, w = content_box(256, 256, data)
    assert (top, left, h, w) == (128, 128, 256, 256)
    equalised = equalize_histogram(image).numpy()
    np.testing.assert_array_equal(np.round(out[top : top + h, left : left + w, 0] * 255), equalised)
    assert out[:top].max() == 0 and out[:, :left].max() == 0
    np.testing.assert_array_equal(
        restore_original_size(out[..., 0] * 255, (256, 256), data), equalised
    )
    # Larger than the canvas and not square: shrunk to fit (aspect kept), then padded.
    wide = np.random.default_rng(0).integers(0, 256, (50, 100), dtype=np.uint8)
    data32 = _data_config(image_size=32, resize_method="pad")
    assert content_box(50, 100, data32) == (8, 0, 16, 32)
    pred = np.zeros((32, 32), np.int32)
    pred[8:24] = 1
    np.testing.assert_array_equal(
        restore_original_size(pred, (50, 100), data32), np.ones((50, 100))
    )
    assert preprocess_image(wide, data32)[:8].max() == 0


def test_resize_mode_restore_is_nearest_and_full_canvas():
    data = _data_config(image_size=32)
    assert content_box(50, 70, data) == (0, 0, 32, 32)
    pred = np.zeros((32, 32), np.uint8)
    pred[:, 16:] = 1
    restored = restore_original_size(pred, (50, 70), data)
    assert restored.shape == (50, 70) and set(np.unique(restored)) == {0, 1}
    assert restored[:, :30].max() == 0 and restored[:, 40:].min() == 1


def test_preprocess_image_matches_eval_scaling_and_rejects_bad_input():
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    data = _data_config(image_size=32, equalize=False)
    out = preprocess_image(image[..., None], data)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.shape == (32, 32, 1)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(image.astype(np.float32), data)
    with pytest.raises(ValueError, match="resize_method"):
        preprocess_image(image, _data_config(image_size=32, resize_method="stretch"))


def _pair(size=32):
    rng = np.random.default_rng(3)
    mask = np.zeros((size, size, 1), np.uint8)
    mask[4:14, 6:20] = 1
    image = (mask * 0.8 + rng.uniform(0, 0.1, mask.shape)).astype(np.float32)
    return tf.constant(image), tf.constant(mask)


def _seed(i):
    return tf.constant([0, i], tf.int64)


def test_no_augmentation_is_identity_and_zero_affine_is_identity():
    image, mask = _pair()
    out_image, out_mask = augment_pair(image, mask, _seed(1), _augment())
    np.testing.assert_array_equal(out_image.numpy(), image.numpy())
    np.testing.assert_array_equal(out_mask.numpy(), mask.numpy())
    zero = _augment(affine=True, max_rotate_deg=0.0, max_scale=0.0, max_translate=0.0)
    out_image, out_mask = augment_pair(image, mask, _seed(1), zero)
    np.testing.assert_allclose(out_image.numpy(), image.numpy(), atol=1e-6)
    np.testing.assert_array_equal(out_mask.numpy(), mask.numpy())


def test_geometric_augmentations_move_image_and_mask_together():
    image, mask = _pair()
    changed = 0
    for i in range(12):
        out_image, out_mask = augment_pair(image, mask, _seed(i), _augment(flip=True, rot90=True))
        # The image is mask * 0.8 + noise, so thresholding it must give back the moved mask exactly.
        np.testing.assert_array_equal((out_image.numpy() > 0.5).astype(np.uint8), out_mask.numpy())
        assert out_mask.numpy().sum() == mask.numpy().sum()
        changed += not np.array_equal(out_mask.numpy(), mask.numpy())
    assert changed >= 6  # 1 in 16 draws is the identity


def test_affine_keeps_mask_binary_and_aligned():
    image, mask = _pair(64)
    aug = _augment(affine=True, max_rotate_deg=20.0, max_scale=0.2, max_translate=0.1)
    moved = 0
    for i in range(6):
        out_image, out_mask = augment_pair(image, mask, _seed(i), aug)
        m = out_mask.numpy()
        assert set(np.unique(m)) <= {0, 1} and m.dtype == np.uint8
        thresholded = out_image.numpy() > 0.4
        iou = (thresholded & (m > 0)).sum() / max((thresholded | (m > 0)).sum(), 1)
        assert iou > 0.8
        moved += not np.array_equal(m, mask.numpy())
    assert moved == 6


def test_brightness_contrast_changes_image_only_and_is_seeded():
    image, mask = _pair()
    aug = _augment(brightness_contrast=True, max_brightness=0.2, max_contrast=0.2)
    a_image, a_mask = augment_pair(image, mask, _seed(5), aug)
    b_image, _ = augment_pair(image, mask, _seed(5), aug)
    c_image, _ = augment_pair(image, mask, _seed(6), aug)
    np.testing.assert_array_equal(a_image.numpy(), b_image.numpy())
    assert not np.array_equal(a_image.numpy(), c_image.numpy())
    assert not np.array_equal(a_image.numpy(), image.numpy())
    np.testing.assert_array_equal(a_mask.numpy(), mask.numpy())
    assert a_image.numpy().min() >= 0.0 and a_image.numpy().max() <= 1.0


def test_switching_one_augmentation_does_not_change_the_others():
    image, mask = _pair()
    flip_only = augment_pair(image, mask, _seed(9), _augment(flip=True))[1].numpy()
    flip_bc = augment_pair(image, mask, _seed(9), _augment(flip=True, brightness_contrast=True))[1]
    np.testing.assert_array_equal(flip_only, flip_bc.numpy())
