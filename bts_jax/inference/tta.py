"""Test-time augmentation: symmetric views of a batch, stacked for one forward pass, and undone.

A view is a symmetry of the square: an optional transpose (swap of rows and columns) followed by
optional flips of the rows and the columns. The 4 flips, and the 8 flips and 90-degree rotations
together (the dihedral group of the square), are closed sets, so averaging the model's
probabilities over them gives the same answer whichever view the image arrived in. Everything here
is pure `jax.numpy`, traceable inside `jax.jit` and `jax.export`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# (transpose, flip rows, flip columns) of each view; the identity first.
_FLIPS = ((False, False, False), (False, False, True), (False, True, False), (False, True, True))
VIEWS = {
    "none": _FLIPS[:1],
    "flips": _FLIPS,
    # A transpose followed by a flip is a 90-degree rotation: the 8 views are all symmetries.
    "dihedral": _FLIPS + tuple((True, rows, cols) for _, rows, cols in _FLIPS),
}
TTA_CHOICES = tuple(VIEWS)


def check_tta(tta: str) -> str:
    """Validates a TTA setting.

    Args:
      tta: "none", "flips" (4 views: identity, left-right, up-down, both) or "dihedral" (the 4
        flips and the 4 transposed flips, i.e. every flip and 90-degree rotation).

    Returns:
      ``tta``.

    Raises:
      ValueError: an unknown setting (the message lists the choices).
    """
    if tta not in VIEWS:
        raise ValueError(f"tta={tta!r}; expected one of {TTA_CHOICES}.")
    return tta


def num_views(tta: str) -> int:
    """Number of views of a TTA setting (1, 4 or 8)."""
    return len(VIEWS[check_tta(tta)])


def _apply(x: jax.Array, view: tuple[bool, bool, bool]) -> jax.Array:
    transpose, flip_rows, flip_cols = view
    if transpose:
        x = jnp.swapaxes(x, 1, 2)
    if flip_rows:
        x = jnp.flip(x, axis=1)
    if flip_cols:
        x = jnp.flip(x, axis=2)
    return x


def _undo(y: jax.Array, view: tuple[bool, bool, bool]) -> jax.Array:
    # Flips are their own inverses and commute; the transpose, applied first, is undone last.
    transpose, flip_rows, flip_cols = view
    y = _apply(y, (False, flip_rows, flip_cols))
    return jnp.swapaxes(y, 1, 2) if transpose else y


def make_views(images: jax.Array, tta: str) -> jax.Array:
    """Stacks every view of a batch on the batch axis, view-major.

    Args:
      images: (B, S, S, C) square images (any C).
      tta: a setting of `TTA_CHOICES`.

    Returns:
      (V * B, S, S, C): rows ``v * B : (v + 1) * B`` are view ``v`` of the batch (view 0 is the
      batch itself).

    Raises:
      ValueError: images that are not (B, S, S, C) with equal sides (a rotated view would not
        fit), or an unknown ``tta``.
    """
    views = VIEWS[check_tta(tta)]
    if images.ndim != 4 or (len(views) > 4 and images.shape[1] != images.shape[2]):
        raise ValueError(f"TTA {tta!r} needs (B, S, S, C) images, got {images.shape}.")
    return jnp.concatenate([_apply(images, view) for view in views], axis=0)


def undo_views(outputs: jax.Array, tta: str) -> jax.Array:
    """Maps per-view outputs back onto the original pixel grid.

    Args:
      outputs: (V * B, S, S, C), the model's outputs on `make_views`'s stack, same order.
      tta: the setting the stack was made with.

    Returns:
      (V, B, S, S, C): entry ``[v, b]`` is view ``v``'s output for image ``b``, in the image's own
      orientation.
    """
    views = VIEWS[check_tta(tta)]
    if outputs.shape[0] % len(views):
        raise ValueError(f"{outputs.shape[0]} outputs are not {len(views)} views of one batch.")
    per_view = jnp.split(outputs, len(views), axis=0)
    return jnp.stack([_undo(y, view) for y, view in zip(per_view, views, strict=True)])
