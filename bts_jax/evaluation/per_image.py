"""Per-image metrics on the host (docs/design.md section 4): Dice, HD95 and boundary IoU.

Each takes one pair of (H, W) masks and scores the foreground. Empty cases: both masks empty is a
perfect answer (Dice 1, HD95 0, boundary IoU 1); exactly one empty is the worst answer (Dice 0,
boundary IoU 0, HD95 = the image diagonal, ``sqrt(H^2 + W^2)`` in the units of ``spacing``).
`bts_jax.evaluation.SegmentationEvaluator` counts each case, so a mean can be read with its
composition.
"""

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# Pixel spacing of the figshare / Kaggle brain-tumour images at their native 512x512
# (docs/design.md section 4).
NATIVE_PIXEL_SPACING_MM = 0.49


NATIVE_IMAGE_SIZE = 512


def pixel_spacing_mm(image_size: int) -> float:
    """Pixel spacing in mm of an image resized from the dataset's native 512 px at 0.49 mm.

    ``spacing = 0.49 * 512 / image_size`` (the field of view stays the same).

    Args:
        image_size: side of the (square) image the metrics are computed on, in pixels.

    Returns:
        Spacing in millimetres per pixel.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return NATIVE_PIXEL_SPACING_MM * NATIVE_IMAGE_SIZE / image_size


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) mask, got shape {mask.shape}")
    return mask > 0


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    return p, g


def dice_per_image(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of one image's foreground masks: ``2 |P & G| / (|P| + |G|)``.

    Both masks empty scores 1.0 (a correct "no tumour"); exactly one empty scores 0.0.

    Args:
        pred: ``(H, W)`` predicted mask; nonzero = foreground.
        gt: ``(H, W)`` ground-truth mask; nonzero = foreground.

    Returns:
        Dice in ``[0, 1]``.
    """
    p, g = _check_pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(p, g).sum()) / total


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner contour of a mask: ``mask AND NOT binary_erosion(mask)``.

    The erosion uses the 4-neighbour cross and treats the image border as background, so a mask
    touching the border still has a closed contour along it.

    Args:
        mask: ``(H, W)`` mask; nonzero = foreground.

    Returns:
        bool ``(H, W)`` contour.
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {m.shape}")
    return m & ~ndimage.binary_erosion(m, border_value=0)


def spacing_pair(spacing: float | Sequence[float]) -> tuple[float, float]:
    """A pixel spacing as (row, column) millimetres: a scalar is the same on both axes."""
    if np.ndim(spacing) == 0:
        return float(spacing), float(spacing)
    sy, sx = spacing
    return float(sy), float(sx)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] = 1.0) -> float:
    """95th-percentile symmetric Hausdorff distance between the contours of two masks.

    Contours are the mask pixels that have a 4-neighbour outside the mask (mask XOR its binary
    erosion; the image border counts as outside). For every contour pixel of ``pred`` the
    Euclidean distance to the nearest contour pixel of ``gt`` is taken
    (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``) and vice versa; HD95 is
    the 95th percentile (NumPy's linear interpolation) of the two sets of distances pooled
    together (the MedPy / BraTS definition).
    A square against the same square shifted by ``k`` pixels gives exactly ``k``.

    Empty masks: both empty -> 0.0; exactly one empty -> the image diagonal
    ``sqrt((H * sy)^2 + (W * sx)^2)``, a worst case larger than any real distance.

    Args:
        pred: ``(H, W)`` predicted mask; nonzero = foreground.
        gt: ``(H, W)`` ground-truth mask; nonzero = foreground.
        spacing: pixel size, one number or ``(sy, sx)``; the result is in its units (pixels by
            default).

    Returns:
        HD95 as a float.
    """
    p, g = _check_pair(pred, gt)
    sy, sx = spacing_pair(spacing)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        h, w = p.shape
        return math.hypot(h * sy, w * sx)
    p_contour, g_contour = mask_contour(p), mask_contour(g)
    # Distance of every pixel to the nearest contour pixel of the other mask.
    to_g = ndimage.distance_transform_edt(~g_contour, sampling=(sy, sx))
    to_p = ndimage.distance_transform_edt(~p_contour, sampling=(sy, sx))
    distances = np.concatenate([to_g[p_contour], to_p[g_contour]])
    return float(np.percentile(distances, 95))


def boundary_region(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Mask pixels within ``dilation`` pixels of the mask's contour (the Boundary IoU band).

    Implemented as in Cheng et al.'s reference code: the mask minus its erosion by a 3x3 square
    repeated ``dilation`` times, the image border counting as background. "Within d pixels" is
    therefore the chessboard distance to the nearest background pixel being ``<= d``.

    Args:
        mask: ``(H, W)`` mask; nonzero = foreground.
        dilation: band width ``d`` in pixels, ``>= 1``.

    Returns:
        bool ``(H, W)`` band.
    """
    m = _as_mask(mask, "mask")
    if not m.any():
        return m
    eroded = ndimage.binary_erosion(
        m, structure=np.ones((3, 3), bool), iterations=int(dilation), border_value=0
    )
    return m & ~eroded


def boundary_dilation(shape: Sequence[int], dilation_ratio: float = 0.02) -> int:
    """Band width of Boundary IoU: ``max(1, round(dilation_ratio * image diagonal))`` pixels.

    Args:
        shape: ``(H, W)`` of the image.
        dilation_ratio: fraction of the image diagonal (0.02 in Cheng et al. 2021).

    Returns:
        The width ``d`` in pixels (14 at 512x512, 1 at 32x32).
    """
    h, w = shape
    return max(1, int(round(dilation_ratio * math.hypot(h, w))))


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of two masks (Cheng, Girshick, Dollár, Berg, Kirillov, CVPR 2021).

    ``|(P_d & P) & (G_d & G)| / |(P_d & P) | (G_d & G)|`` where ``X_d & X`` are the pixels of mask
    ``X`` within ``d`` pixels of its contour (:func:`boundary_region`) and
    ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))``.

    Empty masks: both empty -> 1.0; exactly one empty -> 0.0 (the empty mask has an empty band).

    Args:
        pred: ``(H, W)`` predicted mask; nonzero = foreground.
        gt: ``(H, W)`` ground-truth mask; nonzero = foreground.
        dilation_ratio: band width as a fraction of the image diagonal.

    Returns:
        Boundary IoU in ``[0, 1]``.
    """
    p, g = _check_pair(pred, gt)
    d = boundary_dilation(p.shape, dilation_ratio)
    bp, bg = boundary_region(p, d), boundary_region(g, d)
    union = int(np.logical_or(bp, bg).sum())
    if union == 0:
        return 1.0
    return float(np.logical_and(bp, bg).sum()) / union
