"""How well a model segments: metrics on device and host, evaluation over a split, figures.

`confusion` (device counts and split-level ratios), `per_image` (host Dice, HD95, boundary IoU),
`evaluator` (the host accumulator), `split_evaluation` (a compiled eval step over a whole split,
and the ``eval_<split>.json`` / ``per_image_<split>.csv`` files), `figures` (curves and contour
overlays). Metrics are defined in docs/design.md section 4.
"""

from bts_jax.evaluation.confusion import (
    class_names,
    confusion_matrix,
    metrics_from_confusion,
    num_confusion_classes,
    predictions_from_logits,
)
from bts_jax.evaluation.evaluator import PER_IMAGE_KEYS, SegmentationEvaluator
from bts_jax.evaluation.per_image import (
    boundary_iou,
    dice_per_image,
    hd95,
    mask_contour,
    pixel_spacing_mm,
)
from bts_jax.evaluation.split_evaluation import (
    PER_IMAGE_COLUMNS,
    Evaluation,
    evaluate,
    evaluation_of,
    write_evaluation,
)

__all__ = [
    "PER_IMAGE_COLUMNS",
    "PER_IMAGE_KEYS",
    "Evaluation",
    "SegmentationEvaluator",
    "boundary_iou",
    "class_names",
    "confusion_matrix",
    "dice_per_image",
    "evaluate",
    "evaluation_of",
    "hd95",
    "mask_contour",
    "metrics_from_confusion",
    "num_confusion_classes",
    "pixel_spacing_mm",
    "predictions_from_logits",
    "write_evaluation",
]
