"""equalize_histogram against the OpenCV oracle (docs/design.md section 3), and grayscale."""

import glob
import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from bts_jax.data import SAMPLE_DIR, equalize_histogram, load_grayscale
from bts_jax.data._tf import tf
from bts_jax.data.preprocessing import decode_grayscale

SHARED = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "figshare_brain_tumor"
)


def _check(image: np.ndarray) -> None:
    expected = cv2.equalizeHist(image)
    got = equalize_histogram(image).numpy()
    assert got.dtype == np.uint8 and got.shape == image.shape
    np.testing.assert_array_equal(got, expected)


def test_matches_opencv_on_every_bundled_image():
    paths = sorted(glob.glob(os.path.join(SAMPLE_DIR, "images", "*.png")))
    assert len(paths) == 60
    sizes = set()
    for path in paths:
        image = load_grayscale(path)
        sizes.add(image.shape)
        _check(image)
    assert sizes == {(512, 512), (256, 256)}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="shared figshare folder not present")
def test_matches_opencv_on_all_256x256_real_slices():
    for i in [
        955,
        956,
        957,
        1070,
        1071,
        1072,
        1073,
        1074,
        1075,
        1076,
        1203,
        1204,
        1205,
        1206,
        1207,
    ]:
        image = load_grayscale(os.path.join(SHARED, "images", f"{i}.png"))
        assert image.shape == (256, 256)
        _check(image)


def test_matches_opencv_on_random_images():
    rng = np.random.default_rng(0)
    for i in range(200):
        h, w = (int(x) for x in rng.integers(1, 200, 2))
        kind = i % 5
        if kind == 0:
            image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == 1:  # narrow, low-contrast histogram: the equalisation stretches it a lot
            mean, std = rng.uniform(0, 255), rng.uniform(0.5, 40)
            image = np.clip(rng.normal(mean, std, (h, w)), 0, 255).astype(np.uint8)
        elif kind == 2:  # a handful of levels
            levels = rng.integers(0, 256, int(rng.integers(2, 6))).astype(np.uint8)
            image = rng.choice(levels, (h, w))
        elif kind == 3:  # mostly dark, like an MRI slice
            image = np.clip(rng.exponential(8, (h, w)), 0, 255).astype(np.uint8)
        else:
            image = rng.integers(0, 256, (h, w), dtype=np.uint8) // 37 * 37
        _check(image)


@pytest.mark.slow
def test_float32_rounding_case_that_float64_gets_wrong():
    # N - hist[i0] = 14 and cdf - hist[i0] = 7: the exact value 127.5 rounds (half to even) to 128,
    # but OpenCV's float32 product 7 * (255.f / 14) is just below 127.5 and gives 127.
    image = np.array([[0] * 3 + [1] * 7 + [2] * 7], np.uint8)
    assert cv2.equalizeHist(image)[0, 3] == 127
    _check(image)
    # More such cases, found by search: every d < 400 with a half-integer level.
    for d in range(2, 400, 2):
        for s in range(1, d):
            if (2 * s * 255) % d == 0 and (2 * s * 255 // d) % 2 == 1:
                _check(np.array([[5] * 2 + [9] * s + [200] * (d - s)], np.uint8))


def test_constant_two_level_and_already_equalised():
    for value in (0, 1, 128, 255):
        image = np.full((7, 9), value, np.uint8)
        _check(image)
        np.testing.assert_array_equal(equalize_histogram(image).numpy(), image)
    two = np.zeros((10, 10), np.uint8)
    two[:3] = 200
    _check(two)
    assert set(np.unique(equalize_histogram(two).numpy())) == {0, 255}
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    _check(ramp)
    once = cv2.equalizeHist(load_grayscale(os.path.join(SAMPLE_DIR, "images", "10.png")))
    _check(once)


def test_channel_axis_tf_function_and_tf_data():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 120, (33, 17, 1), dtype=np.uint8)
    expected = cv2.equalizeHist(image[..., 0])[..., None]
    np.testing.assert_array_equal(equalize_histogram(image).numpy(), expected)
    in_graph = tf.function(equalize_histogram, input_signature=[tf.TensorSpec(None, tf.uint8)])
    np.testing.assert_array_equal(in_graph(image).numpy(), expected)
    ds = tf.data.Dataset.from_tensors(image).map(equalize_histogram)
    np.testing.assert_array_equal(next(iter(ds)).numpy(), expected)
    with pytest.raises(ValueError, match="uint8"):
        equalize_histogram(image.astype(np.float32))


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_rgb_to_grayscale_luma_exact_and_same_in_numpy_and_tf(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    w = rgb.astype(np.int64)
    expected = ((299 * w[..., 0] + 587 * w[..., 1] + 114 * w[..., 2] + 500) // 1000).astype(
        np.uint8
    )
    np.testing.assert_array_equal(decode_grayscale(tf.constant(_png(rgb, "RGB"))).numpy(), expected)
    path = tmp_path / "rgb.png"
    path.write_bytes(_png(rgb, "RGB"))
    np.testing.assert_array_equal(load_grayscale(path), expected)
    # A gray image stored as RGB or RGBA comes back unchanged.
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(
        decode_grayscale(tf.constant(_png(np.stack([gray] * 3, -1), "RGB"))).numpy(), gray
    )
    rgba = np.concatenate([np.stack([gray] * 3, -1), np.full((5, 6, 1), 7, np.uint8)], -1)
    np.testing.assert_array_equal(decode_grayscale(tf.constant(_png(rgba, "RGBA"))).numpy(), gray)


def test_load_grayscale_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_grayscale(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="bad.png"):
        load_grayscale(bad)
