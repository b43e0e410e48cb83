"""How probabilities become masks beyond the model itself: TTA, threshold, post-processing."""

from __future__ import annotations

import dataclasses

import numpy as np

from bts_jax.inference import postprocess
from bts_jax.inference import tta as tta_lib


@dataclasses.dataclass(frozen=True)
class PredictionSettings:
    """How probabilities become masks, beyond the model itself.

    Attributes:
      tta: test-time augmentation, a `bts_jax.inference.tta.TTA_CHOICES` value: "none",
        "flips" (4 views) or "dihedral" (the flips and 90-degree rotations, 8 views). The
        probabilities of the views are averaged.
      threshold: a one-logit model predicts tumour where the (averaged) probability is above it;
        0.5 is the training decision. Multi-class models take the argmax and need 0.5.
      keep_largest: keep only the largest foreground component of each mask.
      min_size: drop foreground components under this many pixels (of the mask they are removed
        from: the input's size in prediction, the model's input size in evaluation); 0 keeps all.
    """

    tta: str = "none"
    threshold: float = 0.5
    keep_largest: bool = False
    min_size: int = 0

    def __post_init__(self):
        tta_lib.check_tta(self.tta)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must lie in (0, 1).")
        if self.min_size < 0:
            raise ValueError(f"min_size={self.min_size} must be >= 0.")

    def to_mask(self, probabilities: np.ndarray) -> np.ndarray:
        """The post-processed class map of one image's probabilities.

        Args:
          probabilities: float (H, W) tumour probabilities, or (H, W, C) class probabilities.

        Returns:
          uint8 (H, W) class ids.
        """
        mask = postprocess.class_map(probabilities, self.threshold)
        return postprocess.postprocess_mask(
            mask, keep_largest=self.keep_largest, min_size=self.min_size
        )


def settings_tag(num_members: int, settings: PredictionSettings) -> str:
    """A file-name tag for a combination: e.g. ``ensemble3_tta-flips_largest_min20``.

    Args:
      num_members: workdirs in the ensemble (1 for a single model).
      settings: the prediction settings.

    Returns:
      The tag; "plain" for one model with default settings.
    """
    parts = [f"ensemble{num_members}"] if num_members > 1 else []
    if settings.tta != "none":
        parts.append(f"tta-{settings.tta}")
    if settings.threshold != 0.5:
        parts.append(f"t{settings.threshold:g}")
    if settings.keep_largest:
        parts.append("largest")
    if settings.min_size:
        parts.append(f"min{settings.min_size}")
    return "_".join(parts) or "plain"
