"""Probabilities and masks of images of any size, from one model or an ensemble.

Images go through the very preprocessing of training (`bts_jax.data.preprocess_image`), and
predictions are mapped back onto each input's own pixel grid
(`bts_jax.data.restore_original_size`). Test-time augmentation (`bts_jax.inference.tta`) runs all
views in one forward pass; an ensemble averages its members' probabilities; a
`bts_jax.inference.PredictionSettings` turns probabilities into post-processed masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bts_jax import data as data_lib
from bts_jax.inference import tta as tta_lib
from bts_jax.inference.members import Member
from bts_jax.inference.settings import PredictionSettings


def probabilities_from_logits(logits: jax.Array) -> jax.Array:
    """Per-pixel probabilities: the sigmoid of one logit, the softmax over several.

    Args:
      logits: (B, H, W, C) logits.

    Returns:
      float32 (B, H, W, C).
    """
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits, axis=-1)


def model_probabilities(
    model: nn.Module, variables: dict[str, Any], images: jax.Array, tta: str = "none"
) -> jax.Array:
    """One model's eval-mode probabilities, averaged over the TTA views. Pure and traceable.

    The views are stacked on the batch axis and go through the model in one forward pass of
    ``V * B`` images; each view's probabilities are mapped back before the average.

    Args:
      model: a segmentation model (``apply(variables, x, train=False)`` -> logits).
      variables: ``{"params", "batch_stats"}``.
      images: float32 (B, S, S, 1) preprocessed images.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value.

    Returns:
      float32 (B, S, S, C) probabilities (see `probabilities_from_logits`).
    """
    views = tta_lib.make_views(images, tta)
    probabilities = probabilities_from_logits(model.apply(variables, views, train=False))
    return jnp.mean(tta_lib.undo_views(probabilities, tta), axis=0)


def ensemble_probabilities(
    members: Sequence[Member], images: jax.Array, tta: str = "none"
) -> jax.Array:
    """The members' `model_probabilities`, averaged. Pure and traceable: what export bakes in.

    Args:
      members: ``(model, variables)`` pairs with the same output channels C.
      images: float32 (B, S, S, 1) preprocessed images.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value.

    Returns:
      float32 (B, S, S, C).
    """
    total = sum(model_probabilities(model, v, images, tta) for model, v in members)
    return total / len(members)


# One compile per (model, batch shape, tta); the members of an ensemble run one after the other.
_forward = jax.jit(model_probabilities, static_argnums=(0, 3))


def batch_probabilities(
    members: Sequence[Member], images: np.ndarray, tta: str = "none"
) -> np.ndarray:
    """Averaged probabilities of a preprocessed batch, each member compiled once per shape.

    Args:
      members: ``(model, variables)`` pairs.
      images: float32 (B, S, S, 1) preprocessed images.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value.

    Returns:
      float32 numpy (B, S, S, C).
    """
    if not members:
        raise ValueError("No model given.")
    tta_lib.check_tta(tta)
    total = None
    for model, variables in members:
        probabilities = np.asarray(_forward(model, variables, images, tta), np.float32)
        total = probabilities if total is None else total + probabilities
    return total / len(members)


def probabilities_of_images(
    forward: Callable[[np.ndarray], np.ndarray],
    images: Sequence[np.ndarray],
    data_config: Any,
    *,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Runs a batch function of preprocessed images over images of any size.

    Each image is preprocessed exactly as in evaluation (equalise, resize or pad to
    ``data_config["image_size"]``); batches are padded to ``batch_size``, so ``forward`` sees one
    shape (one compilation); probabilities are mapped back to each image's (H, W) with
    nearest-neighbour sampling, which commutes with thresholding.

    Args:
      forward: maps float32 (batch_size, S, S, 1) to float (batch_size, S, S, C) probabilities.
      images: N uint8 arrays, each (H_i, W_i), (H_i, W_i, 1), or (H_i, W_i, 3|4) (RGB(A),
        converted with the training pipeline's BT.601 luma).
      data_config: the run's ``config.data`` (or a mapping with ``image_size``, ``equalize`` and
        ``resize_method``).
      batch_size: images per call of ``forward``.

    Returns:
      N float32 arrays: (H_i, W_i) tumour probabilities when C is 1, else (H_i, W_i, C).

    Raises:
      ValueError: an image that is not uint8 or has an unsupported shape (the message gives its
        index), or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    grays = [data_lib.as_grayscale(image, i) for i, image in enumerate(images)]
    size = int(data_config["image_size"])
    results = []
    for start in range(0, len(grays), batch_size):
        chunk = grays[start : start + batch_size]
        batch = np.zeros((batch_size, size, size, 1), np.float32)
        for i, gray in enumerate(chunk):
            batch[i] = data_lib.preprocess_image(gray, data_config)
        probabilities = np.asarray(forward(batch), np.float32)
        for p, gray in zip(probabilities, chunk, strict=False):
            restored = data_lib.restore_original_size(p, gray.shape, data_config)
            results.append(restored[..., 0] if restored.shape[-1] == 1 else restored)
    return results


def predict_probabilities(
    members: Sequence[Member],
    images: Sequence[np.ndarray],
    data_config: ml_collections.ConfigDict,
    *,
    tta: str = "none",
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Probability maps of one model or an ensemble, at each image's own size.

    Args:
      members: ``(model, variables)`` pairs (one for a single model; see `load_members`).
      images: N uint8 arrays, as in `predict_masks`.
      data_config: the ``config.data`` the members share.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value; a forward pass then holds
        ``batch_size`` times the number of views images.
      batch_size: images per forward pass (before TTA).

    Returns:
      N float32 arrays: (H_i, W_i) tumour probabilities of one-logit models, else (H_i, W_i, C)
      class probabilities; averaged over the TTA views and the members.

    Raises:
      ValueError: a bad image (its index is given), an unknown ``tta`` or ``batch_size < 1``.
    """
    tta_lib.check_tta(tta)
    return probabilities_of_images(
        lambda batch: batch_probabilities(members, batch, tta),
        images,
        data_config,
        batch_size=batch_size,
    )


def predict_masks(
    model: nn.Module,
    variables: dict[str, Any],
    images: Sequence[np.ndarray],
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int = 8,
    settings: PredictionSettings | None = None,
) -> list[np.ndarray]:
    """Segments images of any size; each mask comes back on its image's own pixel grid.

    Each image is preprocessed exactly as in evaluation (equalise, resize or pad to
    ``data_config.image_size``), the model runs in eval mode (BatchNorm running statistics) on
    batches of ``batch_size`` (the last one padded, so the forward compiles once), and the
    probabilities are mapped back to the image's (H, W) with nearest-neighbour sampling, then
    thresholded and post-processed as ``settings`` say.

    Args:
      model: the model of `load_trained_model`.
      variables: ``{"params", "batch_stats"}``.
      images: N uint8 arrays, each (H_i, W_i), (H_i, W_i, 1), or (H_i, W_i, 3|4) (RGB(A),
        converted with the training pipeline's BT.601 luma).
      data_config: the run's ``config.data``.
      batch_size: images per forward pass.
      settings: TTA, threshold and post-processing; the default is the plain model decision
        (tumour where ``logit > 0``, argmax for several classes).

    Returns:
      N uint8 arrays (H_i, W_i) of class ids: {0, 1} (tumour = 1) for a one-logit model,
      ``0..num_classes-1`` otherwise.

    Raises:
      ValueError: an image that is not uint8 or has an unsupported shape (the message gives its
        index).
    """
    settings = settings or PredictionSettings()
    probabilities = predict_probabilities(
        [(model, variables)], images, data_config, tta=settings.tta, batch_size=batch_size
    )
    return [settings.to_mask(p) for p in probabilities]
