"""From probabilities to masks: the decision rule and connected-component clean-up.

Pure NumPy/SciPy on one image at a time. Connected components are those of the foreground (every
class > 0 together, as the per-image metrics of docs/design.md section 4 see it), with
8-connectivity: pixels touching at a corner belong to the same component.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 8-connectivity in 2D.
_STRUCTURE = np.ones((3, 3), bool)


def class_map(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The predicted class of each pixel.

    Args:
      probabilities: float (H, W) tumour probabilities of a one-logit model, or (H, W, C) class
        probabilities of a C-class model.
      threshold: tumour where the probability is above it (one-logit models only; 0.5 is the
        training decision ``logit > 0``).

    Returns:
      uint8 (H, W): {0, 1} for (H, W) input, the argmax ``0..C-1`` for (H, W, C).

    Raises:
      ValueError: a threshold outside (0, 1), or one other than 0.5 for C classes (argmax has
        no threshold).
    """
    probabilities = np.asarray(probabilities)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold} must lie in (0, 1).")
    if probabilities.ndim == 2:
        return (probabilities > threshold).astype(np.uint8)
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities must be (H, W) or (H, W, C), got {probabilities.shape}.")
    if threshold != 0.5:
        raise ValueError(
            f"threshold={threshold} applies to one-logit models; a {probabilities.shape[-1]}-class "
            "model predicts the argmax."
        )
    return np.argmax(probabilities, axis=-1).astype(np.uint8)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels (H, W) of the foreground and each component's size (index = label)."""
    labels, _ = ndimage.label(mask > 0, structure=_STRUCTURE)
    return labels, np.bincount(labels.ravel())


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Sets to background every foreground component of fewer than ``min_size`` pixels.

    Args:
      mask: integer (H, W) class ids (0 = background).
      min_size: smallest component kept, in pixels of ``mask``; 0 or 1 keeps everything.

    Returns:
      A copy of ``mask`` (same dtype) without the small components.
    """
    if min_size < 0:
        raise ValueError(f"min_size={min_size} must be >= 0.")
    mask = np.array(mask)
    labels, sizes = _components(mask)
    small = sizes < min_size
    small[0] = False  # label 0 is the background
    mask[small[labels]] = 0
    return mask


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keeps only the largest foreground component (the first in raster order on a tie).

    Args:
      mask: integer (H, W) class ids (0 = background).

    Returns:
      A copy of ``mask`` (same dtype) with every other component set to background; an empty
      mask stays empty.
    """
    mask = np.array(mask)
    labels, sizes = _components(mask)
    if len(sizes) <= 1:
        return mask
    largest = 1 + int(np.argmax(sizes[1:]))
    mask[labels != largest] = 0
    return mask


def postprocess_mask(
    mask: np.ndarray, *, keep_largest: bool = False, min_size: int = 0
) -> np.ndarray:
    """Applies the optional clean-ups of prediction: small components, then all but the largest.

    Args:
      mask: integer (H, W) class ids (0 = background).
      keep_largest: keep only the largest foreground component.
      min_size: drop foreground components under this many pixels (0 = keep all).

    Returns:
      The cleaned mask, same shape and dtype (a copy).
    """
    mask = remove_small_components(mask, min_size)
    return keep_largest_component(mask) if keep_largest else mask
