"""Images on the host: files read and checked, one image preprocessed, a prediction mapped back.

These run the very TensorFlow ops of the training pipeline (`bts_jax.data.preprocessing`)
eagerly, so that inference on a single file sees exactly the pixels the model was trained on, and
they map a prediction at the model's input size back onto the image's own pixel grid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bts_jax.data._tf import tf
from bts_jax.data.formats import SIXTEEN_BIT_MODES, TIFF_EXTENSIONS
from bts_jax.data.preprocessing import (
    content_size,
    decode_grayscale,
    preprocess_pair,
    to_grayscale,
)


def load_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as uint8 grayscale, decoded exactly as in the training pipeline.

    Args:
      path: a PNG/JPEG/BMP/GIF file.

    Returns:
      uint8 array (H, W).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file cannot be decoded as an image (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        image = decode_grayscale(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(f"Cannot decode image file {path}: {tf_error_reason(e.message)}") from None
    return image.numpy()


def tf_error_reason(message: str) -> str:
    """The reason in a TensorFlow op error, without TF's op and device names around it.

    Args:
      message: e.g. ``"{{function_node __wrapped__DecodeImage_device_/job:localhost/...}} Invalid
        PNG data, size 300 [Op:DecodeImage] name: "``.

    Returns:
      The reason alone, e.g. ``"Invalid PNG data, size 300"``.
    """
    reason = message.splitlines()[0] if message else ""
    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", reason)
    reason = re.sub(r"\s*\[Op:[^\]]*\].*$", "", reason)
    return reason.strip() or "not a decodable image"


def as_grayscale(image: np.ndarray, index: int = 0) -> np.ndarray:
    """Checks an in-memory image and converts it to uint8 grayscale (H, W) like the decoder does.

    Args:
      image: uint8 (H, W), (H, W, 1), or (H, W, 2|3|4) (gray+alpha, RGB(A): BT.601 luma).
      index: the image's position in its batch, for error messages.

    Returns:
      uint8 array (H, W).

    Raises:
      ValueError: not uint8, or an unsupported shape (the message gives ``index``).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images[{index}] must be uint8, got {image.dtype}.")
    if image.ndim == 3 and image.shape[-1] in (2, 3, 4):
        # Same luma as the training decoder, so an RGB array equals the gray file it came from.
        return to_grayscale(tf.constant(image)).numpy()
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(
            f"images[{index}] must be (H, W), (H, W, 1) or (H, W, 3|4), got {image.shape}."
        )
    return image


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Reads any image file prediction accepts as uint8 grayscale (H, W), decoded like training.

    PNG/JPEG/BMP/GIF go through the training decoder (`load_grayscale`); TIFF, which TensorFlow
    cannot decode, through Pillow, keeping the top 8 bits of 16-bit scans as the PNG decoder does.

    Args:
      path: an image file.

    Returns:
      uint8 array (H, W).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file cannot be decoded (the message names it).
    """
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in TIFF_EXTENSIONS:
        return load_grayscale(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in SIXTEEN_BIT_MODES:
                return (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot decode image file {path}: {e}") from None
    return as_grayscale(array[..., None] if array.ndim == 2 else array)


def preprocess_image(image: np.ndarray, data_config: Mapping[str, Any]) -> np.ndarray:
    """Preprocesses one grayscale image of any size for inference, exactly as evaluation does.

    Equalise (if ``config.data.equalize``), resize or pad to ``config.data.image_size``, scale to
    [0, 1]. Use `restore_original_size` to bring a prediction back to the original (H, W).

    Args:
      image: uint8 array (H, W) or (H, W, 1).
      data_config: ``config.data``.

    Returns:
      float32 array (S, S, 1) in [0, 1].
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"preprocess_image expects a uint8 image, got {image.dtype}.")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"preprocess_image expects shape (H, W) or (H, W, 1), got {image.shape}.")
    processed, _ = preprocess_pair(tf.constant(image), None, data_config)
    return processed.numpy().astype(np.float32) / 255.0


def content_box(
    height: int, width: int, data_config: Mapping[str, Any]
) -> tuple[int, int, int, int]:
    """Where an (height, width) image lies in the S x S model input.

    Args:
      height: original image height H.
      width: original image width W.
      data_config: ``config.data``.

    Returns:
      (top, left, h, w): the image occupies rows top:top+h and columns left:left+w. For
      ``resize_method="resize"`` that is the whole canvas (0, 0, S, S).
    """
    size = int(data_config["image_size"])
    if data_config["resize_method"] == "resize":
        return 0, 0, size, size
    h, w = content_size(tf.constant(height), tf.constant(width), size)
    h, w = int(h), int(w)
    return (size - h) // 2, (size - w) // 2, h, w


def restore_original_size(
    prediction: np.ndarray, original_shape: tuple[int, int], data_config: Mapping[str, Any]
) -> np.ndarray:
    """Maps a model-size prediction back onto the original image grid (undoes resize or pad).

    Crops the content box (pad mode) and resizes it to the original size with nearest-neighbour
    sampling, so a label map stays a label map (pass probabilities to get nearest-sampled
    probabilities).

    Args:
      prediction: array (S, S) or (S, S, C).
      original_shape: (H, W) of the original image.
      data_config: ``config.data``.

    Returns:
      array (H, W) or (H, W, C), dtype of ``prediction``.
    """
    prediction = np.asarray(prediction)
    squeeze = prediction.ndim == 2
    if squeeze:
        prediction = prediction[..., None]
    height, width = int(original_shape[0]), int(original_shape[1])
    top, left, h, w = content_box(height, width, data_config)
    crop = prediction[top : top + h, left : left + w]
    if (h, w) != (height, width):
        crop = tf.image.resize(crop, [height, width], "nearest").numpy()
    return crop[..., 0] if squeeze else crop
