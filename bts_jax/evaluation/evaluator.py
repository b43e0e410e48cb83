"""`SegmentationEvaluator`: the host-side accumulator of an evaluation split's metrics."""

import math

import jax
import numpy as np

from bts_jax.evaluation.confusion import metrics_from_confusion, num_confusion_classes
from bts_jax.evaluation.per_image import (
    boundary_iou,
    dice_per_image,
    hd95,
    pixel_spacing_mm,
    spacing_pair,
)

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
            return spacing_pair(self.pixel_spacing_mm)
        return pixel_spacing_mm(shape[0]), pixel_spacing_mm(shape[1])

    def update(
        self,
        confusion: np.ndarray | jax.Array,
        pred_masks: np.ndarray | jax.Array | None = None,
        gt_masks: np.ndarray | jax.Array | None = None,
        valid: np.ndarray | jax.Array | None = None,
        ids: np.ndarray | list[str] | None = None,
    ) -> None:
        """Adds one batch: its confusion matrix, and its images when masks are given.

        Args:
            confusion: ``(K, K)`` confusion matrix of this batch from :func:`confusion_matrix`
                (already restricted to valid examples).
            pred_masks: integer ``(B, H, W)`` predicted class ids, or None to add only the
                confusion matrix (no per-image metrics).
            gt_masks: integer ``(B, H, W)`` true class ids (with ``pred_masks``).
            valid: optional bool ``(B,)``; examples with ``False`` are skipped.
            ids: optional ``(B,)`` image ids, kept for per-image tables.
        """
        self.add_confusion(confusion)
        if pred_masks is not None:
            self.add_images(pred_masks, gt_masks, valid, ids)

    def add_confusion(self, confusion: np.ndarray | jax.Array) -> None:
        """Adds a batch's ``(K, K)`` confusion matrix (int64 on the host)."""
        k = self.confusion.shape[0]
        confusion = np.asarray(confusion, np.int64)
        if confusion.shape != (k, k):
            raise ValueError(f"confusion must be ({k}, {k}), got {confusion.shape}")
        self.confusion += confusion

    def add_images(
        self,
        pred_masks: np.ndarray | jax.Array,
        gt_masks: np.ndarray | jax.Array,
        valid: np.ndarray | jax.Array | None = None,
        ids: np.ndarray | list[str] | None = None,
    ) -> None:
        """Adds the per-image metrics of a batch's images (`image_metrics` of each valid one).

        Args:
            pred_masks: integer ``(B, H, W)`` predicted class ids.
            gt_masks: integer ``(B, H, W)`` true class ids.
            valid: optional bool ``(B,)``; examples with ``False`` are skipped.
            ids: optional ``(B,)`` image ids, kept for per-image tables.
        """
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
