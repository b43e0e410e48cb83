"""Evaluation metrics (docs/design.md section 4): confusion counts on device, the rest on host.

Two layers:

1. On device, inside the jitted eval step: :func:`predictions_from_logits` and
   :func:`confusion_matrix` turn a batch into an int32 ``(K, K)`` count matrix, which is a plain sum
   and therefore partitions over a sharded batch without gathering pixels.
2. On the host: :class:`SegmentationEvaluator` adds the per-batch matrices in int64 over the whole
   split and computes per-image Dice, HD95 and boundary IoU with NumPy/SciPy. Split-level ratios
   (IoU, mIoU, Dice, precision, recall) come from the accumulated counts, never from averages of
   per-batch ratios.

Scoring of empty and absent cases (all documented again where they apply):

- Confusion metrics (:func:`metrics_from_confusion`): a ratio whose denominator is 0 is NaN
  ("undefined"). In particular a class absent from both truth and prediction over the whole split
  has IoU NaN and is left out of mIoU (mIoU is the mean over the classes where IoU is defined).
- Per-image metrics of the foreground mask (:func:`dice_per_image`, :func:`hd95`,
  :func:`boundary_iou`): both masks empty is a perfect answer (Dice 1, HD95 0, boundary IoU 1);
  exactly one empty is the worst answer (Dice 0, boundary IoU 0, HD95 = the image diagonal,
  ``sqrt(H^2 + W^2)`` in the units of ``spacing``). The evaluator counts each case, so a mean can
  be read with its composition.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

# Pixel spacing of the figshare / Kaggle brain-tumour images at their native 512x512
# (docs/design.md section 4).
NATIVE_PIXEL_SPACING_MM = 0.49
NATIVE_IMAGE_SIZE = 512

BINARY_CLASS_NAMES = ("background", "tumour")


def num_confusion_classes(num_classes: int) -> int:
    """Size K of the confusion matrix: ``max(num_classes, 2)``, as one logit means two classes.

    Args:
        num_classes: the model's number of output channels ``C``.

    Returns:
        ``K``.
    """
    return max(int(num_classes), 2)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names used in metric keys: ("background", "tumour") for binary, else "class_k".

    Args:
        num_classes: the model's number of output channels ``C``.

    Returns:
        A tuple of ``K = max(C, 2)`` names.
    """
    k = num_confusion_classes(num_classes)
    if k == 2:
        return BINARY_CLASS_NAMES
    return tuple(f"class_{i}" for i in range(k))


def predictions_from_logits(logits: jax.Array) -> jax.Array:
    """Hard class predictions from logits.

    For ``C == 1`` the tumour is predicted where ``sigmoid(logit) > 0.5``, computed as ``logit > 0``
    (same decision without the rounding of a sigmoid in low precision). For ``C > 1``: argmax.

    Args:
        logits: ``(B, H, W, C)`` float logits.

    Returns:
        int32 ``(B, H, W)`` class ids.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, H, W, C), got shape {logits.shape}")
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion_matrix(
    predictions: jax.Array,
    labels: jax.Array,
    num_classes: int,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Pixel confusion matrix of one batch, jittable and sharding-friendly.

    ``cm[t, p]`` counts the pixels of valid examples with true class ``t`` and predicted class
    ``p``. Pixels whose label or prediction lies outside ``[0, K)`` (e.g. an ignore label 255) are
    not counted. The counts are computed as a sum over one-hot indicators rather than a scatter,
    so on a batch sharded over devices XLA reduces locally and then all-reduces K*K numbers.

    Args:
        predictions: integer ``(B, H, W)`` predicted class ids (see
            :func:`predictions_from_logits`).
        labels: integer ``(B, H, W)`` true class ids.
        num_classes: the model's number of output channels ``C`` (static); ``K = max(C, 2)``.
        valid: optional bool ``(B,)``; examples with ``False`` are not counted.

    Returns:
        int32 ``(K, K)``; rows are true classes, columns predicted classes. int32 holds any batch
        of fewer than 2**31 pixels; accumulate across batches in int64 on the host.
    """
    if predictions.shape != labels.shape or labels.ndim != 3:
        raise ValueError(
            f"predictions and labels must both be (B, H, W); got {predictions.shape} "
            f"and {labels.shape}"
        )
    k = num_confusion_classes(num_classes)
    classes = jnp.arange(k, dtype=jnp.int32)
    true_1h = labels.astype(jnp.int32)[..., None] == classes  # (B, H, W, K)
    pred_1h = predictions.astype(jnp.int32)[..., None] == classes
    if valid is not None:
        if valid.shape != labels.shape[:1]:
            raise ValueError(f"valid must be (B,) = {labels.shape[:1]}, got {valid.shape}")
        true_1h = true_1h & valid.astype(bool)[:, None, None, None]
    joint = true_1h[..., :, None] & pred_1h[..., None, :]  # (B, H, W, K, K), fused into the sum
    return jnp.sum(joint, axis=(0, 1, 2), dtype=jnp.int32)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def metrics_from_confusion(cm: np.ndarray | jax.Array) -> dict[str, float]:
    """Split-level metrics from an accumulated confusion matrix.

    With ``tp_k = cm[k, k]``, ``fp_k = sum_t cm[t, k] - tp_k``, ``fn_k = sum_p cm[k, p] - tp_k``:

    - ``iou_<name>`` for every class: ``tp_k / (tp_k + fp_k + fn_k)``; NaN when the class is absent
      from both truth and prediction (denominator 0).
    - ``miou``: mean of the defined (non-NaN) per-class IoUs — the paper's metric. NaN only when no
      class is defined (an empty matrix).
    - ``dice``, ``precision``, ``recall`` of the foreground, where foreground means any class
      ``> 0`` (for binary, the tumour): ``2tp / (2tp + fp + fn)``, ``tp / (tp + fp)``,
      ``tp / (tp + fn)``; NaN when the denominator is 0.
    - ``pixel_accuracy``: ``trace(cm) / sum(cm)``.

    Args:
        cm: integer ``(K, K)`` confusion matrix, rows = true class, columns = predicted class.

    Returns:
        Dict of Python floats with the keys above.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion matrix must be (K, K) with K >= 2, got {cm.shape}")
    k = cm.shape[0]
    names = class_names(k)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    result: dict[str, float] = {}
    ious = []
    for i, name in enumerate(names):
        iou = _ratio(tp[i], tp[i] + fp[i] + fn[i])
        result[f"iou_{name}"] = iou
        ious.append(iou)
    defined = [v for v in ious if not math.isnan(v)]
    result["miou"] = float(np.mean(defined)) if defined else math.nan
    # Foreground vs background: collapse all classes > 0 into one.
    fg_tp = cm[1:, 1:].sum()
    fg_fp = cm[0, 1:].sum()
    fg_fn = cm[1:, 0].sum()
    result["dice"] = _ratio(2 * fg_tp, 2 * fg_tp + fg_fp + fg_fn)
    result["precision"] = _ratio(fg_tp, fg_tp + fg_fp)
    result["recall"] = _ratio(fg_tp, fg_tp + fg_fn)
    result["pixel_accuracy"] = _ratio(np.trace(cm), cm.sum())
    return result


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


def _spacing_pair(spacing: float | Sequence[float]) -> tuple[float, float]:
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
    sy, sx = _spacing_pair(spacing)
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


# Per-image quantities the evaluator keeps, in the order of `SegmentationEvaluator.per_image`.
PER_IMAGE_KEYS = (
    "dice",
    "iou",
    "hd95_px",
    "hd95_mm",
    "boundary_iou",
    "truth_pixels",
    "pred_pixels",
    "gt_empty",
    "pred_empty",
)


class SegmentationEvaluator:
    """Host-side accumulator of docs/design.md section 4's metrics over a whole evaluation split.

    Feed it, batch by batch, the device-computed confusion matrix of the global batch and, for
    per-image metrics, the hard predicted and true masks of this host's images. On several hosts,
    each host adds its own images and `extend` merges the per-image lists (the confusion matrices
    are global already). Per-image metrics are computed on the foreground mask: class ``> 0`` (for
    more than one class, any tumour class counts as foreground).

    Example::

        evaluator = SegmentationEvaluator(num_classes=1)
        for batch in eval_batches:
            out = eval_step(state, batch)  # confusion_matrix, predictions_from_logits
            evaluator.update(out["confusion"], out["predictions"], batch["mask"], batch["valid"])
        metrics = evaluator.result()

    Attributes:
        num_classes: the model's number of output channels ``C``.
        pixel_spacing_mm: mm per pixel used for ``hd95_mm``; ``None`` derives it from each image's
            size with :func:`pixel_spacing_mm` (per axis for non-square images).
        dilation_ratio: Boundary IoU band as a fraction of the image diagonal.
        confusion: int64 ``(K, K)`` accumulated confusion matrix.
        ids: ids of the images added with per-image metrics ("" when not given), in update order.
        per_image: dict of per-image lists, keys `PER_IMAGE_KEYS` (valid images only, in update
            order).
    """

    def __init__(
        self,
        num_classes: int,
        pixel_spacing_mm: float | None = None,
        *,
        dilation_ratio: float = 0.02,
    ):
        self.num_classes = int(num_classes)
        self.pixel_spacing_mm = pixel_spacing_mm
        self.dilation_ratio = dilation_ratio
        self.reset()

    def reset(self) -> None:
        """Clears everything accumulated so far."""
        k = num_confusion_classes(self.num_classes)
        self.confusion = np.zeros((k, k), np.int64)
        self.ids: list[str] = []
        self.per_image: dict[str, list] = {key: [] for key in PER_IMAGE_KEYS}

    def _spacing_for(self, shape: tuple[int, int]) -> tuple[float, float]:
        if self.pixel_spacing_mm is not None:
            return _spacing_pair(self.pixel_spacing_mm)
        return pixel_spacing_mm(shape[0]), pixel_spacing_mm(shape[1])

    def update(
        self,
        confusion: np.ndarray | jax.Array,
        pred_masks: np.ndarray | jax.Array | None = None,
        gt_masks: np.ndarray | jax.Array | None = None,
        valid: np.ndarray | jax.Array | None = None,
        ids: np.ndarray | list[str] | None = None,
    ) -> None:
        """Adds one batch.

        Args:
            confusion: ``(K, K)`` confusion matrix of this batch from :func:`confusion_matrix`
                (already restricted to valid examples).
            pred_masks: integer ``(B, H, W)`` predicted class ids, or None to add only the
                confusion matrix (no per-image metrics).
            gt_masks: integer ``(B, H, W)`` true class ids (with ``pred_masks``).
            valid: optional bool ``(B,)``; examples with ``False`` are skipped.
            ids: optional ``(B,)`` image ids, kept for per-image tables.
        """
        k = self.confusion.shape[0]
        confusion = np.asarray(confusion, np.int64)
        if confusion.shape != (k, k):
            raise ValueError(f"confusion must be ({k}, {k}), got {confusion.shape}")
        self.confusion += confusion
        if pred_masks is None:
            return
        preds = np.asarray(pred_masks)
        gts = np.asarray(gt_masks)
        if preds.shape != gts.shape or preds.ndim != 3:
            raise ValueError(
                f"pred_masks and gt_masks must both be (B, H, W); got {preds.shape}, {gts.shape}"
            )
        keep = np.ones(len(preds), bool) if valid is None else np.asarray(valid, bool)
        if keep.shape != preds.shape[:1]:
            raise ValueError(f"valid must be (B,) = {preds.shape[:1]}, got {keep.shape}")
        names = [""] * len(preds) if ids is None else [str(i) for i in ids]
        for pred, gt, name in zip(preds[keep], gts[keep], np.asarray(names)[keep], strict=True):
            self.ids.append(str(name))
            for key, value in self.image_metrics(pred, gt).items():
                self.per_image[key].append(value)

    def image_metrics(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float | bool | int]:
        """The per-image quantities of one (H, W) pair of class maps (keys `PER_IMAGE_KEYS`).

        Args:
            pred: integer (H, W) predicted class ids.
            gt: integer (H, W) true class ids.

        Returns:
            Dice, IoU, HD95 (pixels and mm), boundary IoU, foreground pixel counts and emptiness.
        """
        p, g = pred > 0, gt > 0
        sy, sx = self._spacing_for(p.shape)
        hd_px = hd95(p, g)
        # Isotropic spacing scales distances exactly; only anisotropic needs a second pass.
        hd_mm = hd_px * sy if sy == sx else hd95(p, g, spacing=(sy, sx))
        dice = dice_per_image(p, g)
        return {
            "dice": dice,
            "iou": dice / (2.0 - dice),  # IoU = Dice / (2 - Dice) for the same pair
            "hd95_px": hd_px,
            "hd95_mm": hd_mm,
            "boundary_iou": boundary_iou(p, g, self.dilation_ratio),
            "truth_pixels": int(g.sum()),
            "pred_pixels": int(p.sum()),
            "gt_empty": not g.any(),
            "pred_empty": not p.any(),
        }

    def extend(self, ids: list[str], per_image: dict[str, list]) -> None:
        """Appends per-image results computed elsewhere (another host's images).

        Args:
            ids: their image ids.
            per_image: lists keyed by `PER_IMAGE_KEYS`, each as long as ``ids``.
        """
        for key in PER_IMAGE_KEYS:
            if len(per_image[key]) != len(ids):
                raise ValueError(f"per_image[{key!r}] has {len(per_image[key])} != {len(ids)}")
            self.per_image[key].extend(per_image[key])
        self.ids.extend(ids)

    def per_image_rows(self) -> list[dict[str, str | float | int]]:
        """One dict per image added with masks: ``id`` and the `PER_IMAGE_KEYS` values."""
        return [
            {"id": image_id, **{key: self.per_image[key][i] for key in PER_IMAGE_KEYS}}
            for i, image_id in enumerate(self.ids)
        ]

    def result(self) -> dict[str, float | int]:
        """Metrics over everything added so far.

        Returns:
            Dict of Python numbers: the float keys of :func:`metrics_from_confusion`, plus
            ``dice_per_image`` (mean per-image Dice), ``hd95_px`` and ``hd95_mm`` (mean per-image
            HD95), ``boundary_iou`` (mean per-image Boundary IoU), and the int counts
            ``num_images``, ``num_both_empty``, ``num_pred_empty_only`` (missed tumour) and
            ``num_gt_empty_only`` (false tumour) behind the empty-mask rules. Means over zero
            images are NaN.
        """
        result: dict[str, float | int] = dict(metrics_from_confusion(self.confusion))

        def mean(key: str) -> float:
            values = self.per_image[key]
            return float(np.mean(values)) if values else math.nan

        gt_empty = np.asarray(self.per_image["gt_empty"], bool)
        pred_empty = np.asarray(self.per_image["pred_empty"], bool)
        result.update(
            dice_per_image=mean("dice"),
            hd95_px=mean("hd95_px"),
            hd95_mm=mean("hd95_mm"),
            boundary_iou=mean("boundary_iou"),
            num_images=len(gt_empty),
            num_both_empty=int(np.sum(gt_empty & pred_empty)),
            num_pred_empty_only=int(np.sum(pred_empty & ~gt_empty)),
            num_gt_empty_only=int(np.sum(gt_empty & ~pred_empty)),
        )
        return result
