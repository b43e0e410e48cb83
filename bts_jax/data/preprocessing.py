"""Per-image preprocessing (docs/design.md section 3): decode, grayscale, equalise, fit.

Everything here runs inside the tf.data graph and is written in TensorFlow ops; the host-side
helpers of `bts_jax.data.images` (`load_grayscale`, `preprocess_image`, `restore_original_size`)
run the very same ops eagerly, so that inference on a single file sees exactly the pixels the model
was trained on.

Conventions: images are uint8 until the final scaling to float32 [0, 1]; masks are uint8 {0, 1}
inside the pipeline and int32 {0, 1} in the batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bts_jax.data._tf import tf
from bts_jax.data.formats import MASK_THRESHOLD

# Luma weights of ITU-R BT.601 (docs/design.md section 3, step 1) in thousandths, so grayscale
# conversion is exact integer arithmetic and identical in the TF graph and in numpy.
_LUMA_WEIGHTS_PER_MILLE = (299, 587, 114)


def equalize_histogram(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation, bit-identical to OpenCV's ``cv2.equalizeHist``.

    OpenCV (imgproc/src/histogram.cpp, ``EqualizeHistLut_Invoker``) computes, for a uint8 image of N
    pixels with 256-bin histogram ``hist``:

    - ``i0`` = the first level with ``hist[i0] > 0``; if ``hist[i0] == N`` the image is constant and
      is returned unchanged (OpenCV fills the output with ``i0``, which is the same thing);
    - ``scale = 255.f / (N - hist[i0])`` in float32;
    - ``lut[v] = saturate_cast<uchar>((float)(cdf[v] - hist[i0]) * scale)`` for ``v >= i0`` (so
      ``lut[i0] = 0``), and ``lut[v] = 0`` below ``i0``. ``saturate_cast`` rounds half to even
      (``cvRound``).

    This reproduces those float32 operations one by one (a float32 division, a float32 product,
    round half to even), which is what makes it bit-exact: computing the formula in float64 instead
    differs from OpenCV on a few levels of some images.

    Works eagerly, inside ``tf.function`` and inside ``tf.data`` maps.

    Args:
      image: uint8 tensor of shape (H, W) or (H, W, 1).

    Returns:
      The equalised uint8 tensor, same shape as ``image``.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(f"equalize_histogram expects a uint8 image, got {image.dtype}.")
    if image.shape.rank not in (None, 2, 3):
        raise ValueError(
            f"equalize_histogram expects shape (H, W) or (H, W, 1), got {image.shape}."
        )
    flat = tf.cast(tf.reshape(image, [-1]), tf.int32)
    hist = tf.math.bincount(flat, minlength=256, maxlength=256, dtype=tf.int32)
    total = tf.size(flat, out_type=tf.int32)
    i0 = tf.argmax(tf.cast(hist > 0, tf.int32), output_type=tf.int32)
    hist_i0 = hist[i0]
    # Guard only against the division by zero of a constant image, whose result is not used.
    denominator = tf.cast(tf.maximum(total - hist_i0, 1), tf.float32)
    scale = tf.constant(255.0, tf.float32) / denominator
    shifted_cdf = tf.cast(tf.cumsum(hist) - hist_i0, tf.float32)
    lut = tf.clip_by_value(tf.math.round(shifted_cdf * scale), 0.0, 255.0)
    lut = tf.where(tf.range(256) >= i0, lut, 0.0)
    lut = tf.cast(lut, tf.uint8)
    equalized = tf.reshape(tf.gather(lut, flat), tf.shape(image))
    return tf.where(hist_i0 == total, image, equalized)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Converts a decoded uint8 image with 1-4 channels to a single grayscale channel.

    RGB uses the BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, computed in integers as ``(299 R + 587
    G + 114 B + 500) // 1000`` — exact rounding to nearest, halves up. (This can differ by one level
    from OpenCV's and Pillow's fixed-point conversions, which use 14- and 16-bit weights.) An RGB
    image whose channels are equal (a gray image saved as RGB) is returned exactly. Alpha channels
    are dropped.

    Args:
      image: uint8 tensor (H, W, C) with C in {1, 2 (gray + alpha), 3 (RGB), 4 (RGBA)}.

    Returns:
      uint8 tensor (H, W).
    """
    channels = tf.shape(image)[-1]

    def luma():
        rgb = tf.cast(image[..., :3], tf.int32)
        weighted = (
            _LUMA_WEIGHTS_PER_MILLE[0] * rgb[..., 0]
            + _LUMA_WEIGHTS_PER_MILLE[1] * rgb[..., 1]
            + _LUMA_WEIGHTS_PER_MILLE[2] * rgb[..., 2]
        )
        return tf.cast((weighted + 500) // 1000, tf.uint8)

    return tf.cond(channels >= 3, luma, lambda: image[..., 0])


def decode_grayscale(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes PNG/JPEG/BMP/GIF bytes to a uint8 grayscale image (16-bit PNGs are scaled to 8 bits).

    Args:
      encoded: scalar string tensor, the file's bytes.

    Returns:
      uint8 tensor (H, W).
    """
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
    return to_grayscale(image)


def content_size(height, width, size: int):
    """Size (h, w) of the image in the canvas of ``resize_method="pad"`` (tensors or ints)."""
    longest = tf.maximum(height, width)
    scale = tf.minimum(tf.constant(1.0, tf.float64), size / tf.cast(longest, tf.float64))
    h = tf.maximum(1, tf.cast(tf.math.round(tf.cast(height, tf.float64) * scale), tf.int32))
    w = tf.maximum(1, tf.cast(tf.math.round(tf.cast(width, tf.float64) * scale), tf.int32))
    return h, w


def _resize_image(image: tf.Tensor, height, width) -> tf.Tensor:
    """Bilinear resize of a uint8 (H, W, 1) image, rounded back to uint8.

    Antialiasing only matters when shrinking (it is then a proper triangle filter instead of
    sampling 4 pixels out of many); when enlarging, or at the same size, it is plain bilinear with
    half-pixel centres (as cv2.INTER_LINEAR), and a same-size resize returns the input exactly.
    """
    resized = tf.image.resize(
        tf.cast(image, tf.float32), [height, width], "bilinear", antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.math.round(resized), 0.0, 255.0), tf.uint8)


def _resize_mask(mask: tf.Tensor, height, width) -> tf.Tensor:
    return tf.image.resize(mask, [height, width], "nearest")


def fit_to_size(
    image: tf.Tensor, mask: tf.Tensor | None, size: int, resize_method: str
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Brings an image (and its mask) to size x size.

    - ``"resize"``: image bilinear (see `_resize_image`), mask nearest; the aspect ratio is not
      kept.
    - ``"pad"`` (letterbox): an image that fits is zero-padded around its centre to size x size at
      its native resolution (top/left get the smaller half of an odd padding); a larger one is first
      shrunk, keeping its aspect ratio, until its longest side is ``size``. `content_box` says where
      the image lies in the canvas, and `restore_original_size` undoes it.

    Args:
      image: uint8 (H, W, 1).
      mask: uint8 (H, W, 1) with values {0, 1}, or None.
      size: the output side S.
      resize_method: "resize" or "pad".

    Returns:
      (image, mask), uint8 (S, S, 1) each (mask None if not given).
    """
    if resize_method == "resize":
        image = _resize_image(image, size, size)
        mask = None if mask is None else _resize_mask(mask, size, size)
        return image, mask
    if resize_method != "pad":
        raise ValueError(
            f'config.data.resize_method must be "resize" or "pad", got {resize_method!r}.'
        )
    shape = tf.shape(image)
    h, w = content_size(shape[0], shape[1], size)
    image = _resize_image(image, h, w)
    mask = None if mask is None else _resize_mask(mask, h, w)
    top, left = (size - h) // 2, (size - w) // 2
    image = tf.image.pad_to_bounding_box(image, top, left, size, size)
    if mask is not None:
        mask = tf.image.pad_to_bounding_box(mask, top, left, size, size)
    return image, mask


def preprocess_pair(
    image: tf.Tensor, mask: tf.Tensor | None, data_config: Mapping[str, Any]
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Deterministic preprocessing of one decoded pair: equalise, binarise the mask, fit to size.

    Equalisation runs on the original image, before any resizing, as in the paper's OpenCV pipeline.

    Args:
      image: uint8 (H, W) grayscale image.
      mask: uint8 (H, W) mask (any values; > `MASK_THRESHOLD` is tumour) or None.
      data_config: ``config.data`` (reads ``equalize``, ``image_size``, ``resize_method``).

    Returns:
      (image uint8 (S, S, 1), mask uint8 (S, S, 1) with values {0, 1} or None).
    """
    if data_config["equalize"]:
        image = equalize_histogram(image)
    image = image[..., tf.newaxis]
    if mask is not None:
        mask = tf.cast(mask > MASK_THRESHOLD, tf.uint8)[..., tf.newaxis]
    size = int(data_config["image_size"])
    image, mask = fit_to_size(image, mask, size, data_config["resize_method"])
    image = tf.ensure_shape(image, [size, size, 1])
    if mask is not None:
        mask = tf.ensure_shape(mask, [size, size, 1])
    return image, mask
