"""Post-processing tests: the decision rule and connected components, on hand-made masks."""

import numpy as np
import pytest

from bts_jax.inference import postprocess


def _blobs() -> np.ndarray:
    """A 10x12 mask: a 3x3 square (9 px), a diagonal pair (2 px, one 8-connected component), a
    single pixel of class 2 (1 px) and a 4x4 square (16 px)."""
    mask = np.zeros((10, 12), np.uint8)
    mask[0:3, 0:3] = 1
    mask[5, 5] = mask[6, 6] = 1
    mask[0, 8] = 2
    mask[5:9, 8:12] = 1
    return mask


def test_class_map_threshold_and_argmax():
    p = np.array([[0.2, 0.5, 0.51], [0.9, 0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(postprocess.class_map(p), [[0, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(postprocess.class_map(p, 0.1), [[1, 1, 1], [1, 0, 1]])
    assert postprocess.class_map(p).dtype == np.uint8
    three = np.array([[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]], np.float32)  # (1, 2, 3)
    np.testing.assert_array_equal(postprocess.class_map(three), [[1, 0]])
    with pytest.raises(ValueError, match="argmax"):
        postprocess.class_map(three, 0.3)
    with pytest.raises(ValueError, match=r"threshold=1.0 must lie in \(0, 1\)"):
        postprocess.class_map(p, 1.0)
    with pytest.raises(ValueError, match="must be"):
        postprocess.class_map(np.zeros((1, 2, 3, 4)))


def test_remove_small_components():
    mask = _blobs()
    kept = postprocess.remove_small_components(mask, 3)
    expected = mask.copy()
    expected[5, 5] = expected[6, 6] = 0  # the 2-pixel diagonal pair
    expected[0, 8] = 0  # the 1-pixel class-2 component
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == mask.dtype
    # The pair is one component (8-connectivity): min_size 2 keeps it, 10 keeps only the 4x4.
    assert postprocess.remove_small_components(mask, 2)[6, 6] == 1
    assert postprocess.remove_small_components(mask, 10).sum() == 16
    np.testing.assert_array_equal(postprocess.remove_small_components(mask, 0), mask)
    np.testing.assert_array_equal(postprocess.remove_small_components(mask, 1), mask)
    assert mask[5, 5] == 1  # the input is not modified
    with pytest.raises(ValueError, match="min_size"):
        postprocess.remove_small_components(mask, -1)


def test_keep_largest_component():
    mask = _blobs()
    largest = postprocess.keep_largest_component(mask)
    expected = np.zeros_like(mask)
    expected[5:9, 8:12] = 1
    np.testing.assert_array_equal(largest, expected)
    # Classes keep their values; a tie keeps the first component in raster order.
    tie = np.zeros((3, 5), np.int32)
    tie[0, 0], tie[2, 4] = 2, 1
    np.testing.assert_array_equal(
        postprocess.keep_largest_component(tie), [[2, 0, 0, 0, 0], [0] * 5, [0] * 5]
    )
    empty = np.zeros((4, 4), np.uint8)
    np.testing.assert_array_equal(postprocess.keep_largest_component(empty), empty)


def test_postprocess_mask_combines_both():
    mask = _blobs()
    np.testing.assert_array_equal(postprocess.postprocess_mask(mask), mask)
    both = postprocess.postprocess_mask(mask, keep_largest=True, min_size=20)
    assert not both.any()  # the largest component (16 px) is under min_size
    only_largest = postprocess.postprocess_mask(mask, keep_largest=True, min_size=3)
    np.testing.assert_array_equal(only_largest, postprocess.keep_largest_component(mask))
