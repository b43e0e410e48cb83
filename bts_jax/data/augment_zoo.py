"""The built-in augmentation ops (``config.data.augmentations``; `bts_jax.data.augment_ops`).

Two kinds, told apart by the signature, as for a user's op:

* geometric, ``op(image, mask, seed, *args) -> (image, mask)``: moves image and mask together;
  the image is interpolated, the mask only ever moved or sampled by nearest neighbour, so it stays
  {0, 1};
* intensity, ``op(image, seed, *args) -> image``: the image only; the mask is not passed.

Everywhere: ``image`` float32 (S, S, 1) in [0, 1], ``mask`` uint8 (S, S, 1) in {0, 1}, ``seed``
int (2,), the op's own stateless stream (every random number an op draws comes from it). Outputs
keep those shapes, dtypes and ranges. Arguments are checked when the op is first called, which
`bts_jax.data.augment_ops.check_ops` does on a tiny pair before anything is built.

``flip``, ``rot90``, ``affine`` and ``brightness_contrast`` are the four augmentations of
``bts_jax.data.augment_pair`` before the registry, draw for draw (tests/data/augment_golden.npz).
"""

from __future__ import annotations

import math

from bts_jax.data._tf import tf


def _check(op: str, condition: bool, requirement: str) -> None:
    if not condition:
        raise ValueError(f"{op}: {requirement}.")


def _check_probability(op: str, p: float) -> float:
    p = float(p)
    _check(op, 0.0 <= p <= 1.0, f"p={p} must be a probability in [0, 1]")
    return p


def _flip_axis(image, mask, seed, axis: int, p: float):
    flip = tf.random.stateless_uniform([], seed) < p
    image = tf.where(flip, tf.reverse(image, [axis]), image)
    return image, tf.where(flip, tf.reverse(mask, [axis]), mask)


def flip(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Left-right and up-down flips, each with probability 1/2 (both from one draw of 2).

    Args:
      image: float32 (S, S, 1).
      mask: uint8 (S, S, 1).
      seed: int (2,), the op's stream.

    Returns:
      (image, mask), flipped alike.
    """
    u = tf.random.stateless_uniform([2], seed)
    lr, ud = u[0] < 0.5, u[1] < 0.5
    image = tf.where(lr, tf.reverse(image, [1]), image)
    mask = tf.where(lr, tf.reverse(mask, [1]), mask)
    image = tf.where(ud, tf.reverse(image, [0]), image)
    mask = tf.where(ud, tf.reverse(mask, [0]), mask)
    return image, mask


def flip_lr(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, p: float = 0.5
) -> tuple[tf.Tensor, tf.Tensor]:
    """Left-right flip (of the width axis) with probability ``p``.

    Args:
      image: float32 (S, S, 1).
      mask: uint8 (S, S, 1).
      seed: int (2,), the op's stream.
      p: the flip's probability.

    Returns:
      (image, mask), flipped alike or both unchanged.
    """
    return _flip_axis(image, mask, seed, 1, _check_probability("flip_lr", p))


def flip_ud(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, p: float = 0.5
) -> tuple[tf.Tensor, tf.Tensor]:
    """Up-down flip (of the height axis) with probability ``p``.

    Args:
      image: float32 (S, S, 1).
      mask: uint8 (S, S, 1).
      seed: int (2,), the op's stream.
      p: the flip's probability.

    Returns:
      (image, mask), flipped alike or both unchanged.
    """
    return _flip_axis(image, mask, seed, 0, _check_probability("flip_ud", p))


def rot90(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotation by k * 90 degrees counter-clockwise, k uniform in {0, 1, 2, 3}.

    Args:
      image: float32 (S, S, 1) (square, so the shape is kept).
      mask: uint8 (S, S, 1).
      seed: int (2,), the op's stream.

    Returns:
      (image, mask), rotated alike.
    """
    k = tf.random.stateless_uniform([], seed, 0, 4, dtype=tf.int32)
    return tf.image.rot90(image, k), tf.image.rot90(mask, k)


def affine_transform(
    seed: tf.Tensor, size: int, rotate: float, scale: float, translate: float
) -> tf.Tensor:
    """A random rotation/zoom/shift about the image centre, as an output->input transform.

    Args:
      seed: int (2,); 4 uniforms in [-1, 1] are drawn from it (angle, zoom, x shift, y shift).
      size: the side S of the square image.
      rotate: the largest rotation, degrees.
      scale: the largest zoom change: the zoom is 1 +- ``scale``.
      translate: the largest shift, as a fraction of the side, in x and in y.

    Returns:
      float32 (8,), ``[a0, a1, a2, b0, b1, b2, 0, 0]`` of ImageProjectiveTransformV3: output pixel
      (x, y) samples input pixel (a0 x + a1 y + a2, b0 x + b1 y + b2).
    """
    u = tf.random.stateless_uniform([4], seed, -1.0, 1.0, dtype=tf.float32)
    angle = u[0] * float(rotate) * (math.pi / 180.0)
    zoom = 1.0 + u[1] * float(scale)
    tx = u[2] * float(translate) * size
    ty = u[3] * float(translate) * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # Forward map: out = c + zoom * R(angle) (in - c) + t, inverted because the op samples the
    # input.
    a2 = c - (cos * (c + tx) + sin * (c + ty))
    b2 = c - (-sin * (c + tx) + cos * (c + ty))
    return tf.stack([cos, sin, a2, -sin, cos, b2, 0.0, 0.0])


def project(x: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Samples (S, S, C) ``x`` at ``transform`` (see `affine_transform`), zero outside.

    Args:
      x: (S, S, C) float32 or uint8.
      transform: float32 (8,).
      interpolation: ``"BILINEAR"`` (images) or ``"NEAREST"`` (masks: the values stay {0, 1}).

    Returns:
      (S, S, C), ``x``'s dtype.
    """
    size = int(x.shape[0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    return out[0]


def affine(
    image: tf.Tensor,
    mask: tf.Tensor,
    seed: tf.Tensor,
    rotate: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.05,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotation, zoom and shift about the centre; image bilinear, mask nearest, zero fill.

    The rotation is uniform in +-``rotate`` degrees, the zoom in 1 +- ``scale``, the shift in
    +-``translate`` of the side in x and y (all zero: the identity).

    Args:
      image: float32 (S, S, 1).
      mask: uint8 (S, S, 1).
      seed: int (2,), the op's stream.
      rotate: the largest rotation, degrees, >= 0.
      scale: the largest zoom change, in [0, 1).
      translate: the largest shift, a fraction of the side, >= 0.

    Returns:
      (image, mask), moved alike.
    """
    rotate, scale, translate = float(rotate), float(scale), float(translate)
    _check("affine", rotate >= 0 and translate >= 0, "rotate and translate must be >= 0")
    _check("affine", 0 <= scale < 1, f"scale={scale} must be in [0, 1) (the zoom is 1 +- scale)")
    transform = affine_transform(seed, int(image.shape[0]), rotate, scale, translate)
    return project(image, transform, "BILINEAR"), project(mask, transform, "NEAREST")


def brightness_contrast(
    image: tf.Tensor, seed: tf.Tensor, brightness: float = 0.1, contrast: float = 0.1
) -> tf.Tensor:
    """Brightness and contrast: ``(x - mean) * c + mean + b``, clipped to [0, 1].

    c is uniform in 1 +- ``contrast``, b in +-``brightness`` (c drawn first), ``mean`` the
    image's mean.

    Args:
      image: float32 (S, S, 1) in [0, 1].
      seed: int (2,), the op's stream.
      brightness: the largest brightness shift, >= 0.
      contrast: the largest contrast change, >= 0.

    Returns:
      float32 (S, S, 1) in [0, 1].
    """
    brightness, contrast = float(brightness), float(contrast)
    _check("brightness_contrast", brightness >= 0 and contrast >= 0, "ranges must be >= 0")
    u = tf.random.stateless_uniform([2], seed, -1.0, 1.0)
    factor = 1.0 + u[0] * contrast
    shift = u[1] * brightness
    mean = tf.reduce_mean(image)
    return tf.clip_by_value((image - mean) * factor + mean + shift, 0.0, 1.0)


def gamma(image: tf.Tensor, seed: tf.Tensor, low: float = 0.7, high: float = 1.5) -> tf.Tensor:
    """``x ** g`` with g uniform in [``low``, ``high``] (nnU-Net's gamma range by default).

    Keeps 0 and 1 fixed, so the range stays [0, 1]; g < 1 brightens the dark tissue.

    Args:
      image: float32 (S, S, 1) in [0, 1].
      seed: int (2,), the op's stream.
      low: the smallest exponent, > 0.
      high: the largest exponent, >= ``low``.

    Returns:
      float32 (S, S, 1) in [0, 1].
    """
    low, high = float(low), float(high)
    _check("gamma", 0 < low <= high, f"need 0 < low <= high, got low={low}, high={high}")
    g = tf.random.stateless_uniform([], seed, low, high)
    return tf.pow(image, g)


def noise(image: tf.Tensor, seed: tf.Tensor, std: float = 0.03) -> tf.Tensor:
    """Additive Gaussian noise of standard deviation ``std`` per pixel, clipped to [0, 1].

    Args:
      image: float32 (S, S, 1) in [0, 1].
      seed: int (2,), the op's stream.
      std: the noise's standard deviation, >= 0.

    Returns:
      float32 (S, S, 1) in [0, 1].
    """
    std = float(std)
    _check("noise", std >= 0, f"std={std} must be >= 0")
    sample = tf.random.stateless_normal(tf.shape(image), seed, stddev=std)
    return tf.clip_by_value(image + sample, 0.0, 1.0)


BUILTIN_OPS = {
    "flip": flip,
    "flip_lr": flip_lr,
    "flip_ud": flip_ud,
    "rot90": rot90,
    "affine": affine,
    "brightness_contrast": brightness_contrast,
    "gamma": gamma,
    "noise": noise,
}
