"""A user's own augmentation ops, named by import path in tests (``tests.user_augment:invert``)."""

from bts_jax.data._tf import tf


def invert(image, seed, strength=1.0):
    """An intensity op: blends the image with its negative, ``(1 - s) x + s (1 - x)``."""
    del seed  # Deterministic: draws nothing.
    return (1.0 - strength) * image + strength * (1.0 - image)


def shift_down(image, mask, seed, max_rows=2):
    """A geometric op: rolls image and mask down by 0..max_rows rows (the same draw)."""
    rows = tf.random.stateless_uniform([], seed, 0, max_rows + 1, dtype=tf.int32)
    return tf.roll(image, rows, axis=0), tf.roll(mask, rows, axis=0)


def blur_mask(image, mask, seed):
    """Breaks the contract: interpolates the mask, which stops being binary."""
    del seed
    soft = (tf.cast(mask, tf.float32) + tf.roll(tf.cast(mask, tf.float32), 1, axis=0)) / 2
    return image, tf.cast(soft * 2, tf.uint8)


def to_uint8(image, seed):
    """Breaks the contract: returns a uint8 image."""
    del seed
    return tf.cast(image * 255, tf.uint8)
