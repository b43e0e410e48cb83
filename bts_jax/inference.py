"""Prediction with trained models: probabilities and masks of any size, from arrays or image files.

Everything here needs only workdirs (``config.json`` and the Orbax checkpoints, read by
`bts_jax.checkpointing.load_trained_model`), never the training data, so a trained workdir copied
to another machine predicts there. Images go through the very preprocessing of training
(`bts_jax.data.preprocess_image`), and predictions are mapped back onto each input's own pixel grid
(`bts_jax.data.restore_original_size`). On top of one model's prediction: test-time augmentation
(`bts_jax.tta`, all views in one forward pass), ensembles of workdirs (probabilities averaged), and
connected-component post-processing (`bts_jax.postprocess`), chosen by a `PredictionSettings`.
Figures that need ground truth are in `bts_jax.figures`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from bts_jax import checkpointing, plots, postprocess
from bts_jax import data as data_lib
from bts_jax import tta as tta_lib
from bts_jax.data.formats import PREDICT_EXTENSIONS, has_extension

# Images decoded at once by predict_files: bounds host memory on folders of thousands of images.
_FILES_PER_CHUNK = 64

# The settings every member of an ensemble must share: the same input and the same output.
ENSEMBLE_SETTINGS = ("data.image_size", "data.equalize", "data.resize_method", "model.num_classes")

SETTINGS_FILE = "prediction_settings.json"
PROBABILITY_FORMATS = ("png", "npy")

# A model with its variables, ``{"params", "batch_stats"}``.
Member = tuple[nn.Module, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class PredictionSettings:
    """How probabilities become masks, beyond the model itself.

    Attributes:
      tta: test-time augmentation, a `bts_jax.tta.TTA_CHOICES` value: "none", "flips" (4 views)
        or "dihedral" (the flips and 90-degree rotations, 8 views). The probabilities of the views
        are averaged.
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


# ----------------------------------------------------------------------------- loading


def _setting(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value = config
    for key in dotted.split("."):
        value = value[key]
    return value


def check_ensemble_configs(configs: dict[str, ml_collections.ConfigDict]) -> None:
    """Checks that workdirs can be averaged: same preprocessing and the same classes.

    Args:
      configs: workdir -> its saved config.

    Raises:
      ValueError: naming the first differing setting of `ENSEMBLE_SETTINGS` and every workdir's
        value of it.
    """
    for dotted in ENSEMBLE_SETTINGS:
        values = {workdir: _setting(config, dotted) for workdir, config in configs.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{workdir}: {value!r}" for workdir, value in values.items())
            raise ValueError(
                f"Cannot ensemble workdirs with different config.{dotted} ({listed}); an "
                f"ensemble needs the same {', '.join(ENSEMBLE_SETTINGS)}."
            )


def load_members(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike], which: str = "best"
) -> tuple[ml_collections.ConfigDict, list[Member]]:
    """Loads one trained workdir, or several for an ensemble (see `check_ensemble_configs`).

    Args:
      workdirs: a workdir or a list of them (seeds or folds of one sweep).
      which: checkpoint of each, "best" or "latest".

    Returns:
      ``(config, members)``: the first workdir's config and one ``(model, variables)`` per
      workdir, in order.

    Raises:
      FileNotFoundError: a missing workdir or checkpoint (named).
      ValueError: no workdir, or workdirs that cannot be ensembled (the setting is named).
    """
    if isinstance(workdirs, str | os.PathLike):
        workdirs = [workdirs]
    workdirs = [os.fspath(w) for w in workdirs]
    if not workdirs:
        raise ValueError("No workdir given.")
    if len(set(workdirs)) < len(workdirs):
        raise ValueError(f"A workdir is listed twice: {workdirs}.")
    check_ensemble_configs({w: checkpointing.load_config(w) for w in workdirs})
    loaded = [checkpointing.load_trained_model(w, which) for w in workdirs]
    return loaded[0][0], [(model, variables) for _, model, variables in loaded]


def member_records(workdirs: Sequence[str | os.PathLike], which: str) -> list[dict[str, Any]]:
    """What to record of the models behind a prediction: each workdir and its checkpoint step.

    Args:
      workdirs: the members.
      which: their checkpoint choice, "best" or "latest".

    Returns:
      One ``{"workdir" (absolute), "which", "step"}`` per workdir.
    """
    return [
        {
            "workdir": os.path.abspath(w),
            "which": which,
            "step": checkpointing.resolve_checkpoint(w, which)[1],
        }
        for w in workdirs
    ]


# ----------------------------------------------------------------------------- probabilities


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
      tta: a `bts_jax.tta.TTA_CHOICES` value.

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
      tta: a `bts_jax.tta.TTA_CHOICES` value.

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
      tta: a `bts_jax.tta.TTA_CHOICES` value.

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
      tta: a `bts_jax.tta.TTA_CHOICES` value; a forward pass then holds ``batch_size`` times the
        number of views images.
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


def _list_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands folders into their image files; keeps files as given; checks that all exist."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    paths = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found = [
                os.path.join(item, name)
                for name in sorted(os.listdir(item))
                if has_extension(name, PREDICT_EXTENSIONS)
                and os.path.isfile(os.path.join(item, name))
            ]
            if not found:
                raise ValueError(f"No image files ({', '.join(PREDICT_EXTENSIONS)}) in {item}.")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"Input not found: {item}")
    if not paths:
        raise ValueError("No inputs given.")
    stems: dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(
                f"{stems[stem]} and {path} would both write {stem}_mask.png; rename one."
            )
        stems[stem] = path
    return paths


def save_probability_map(probabilities: np.ndarray, path_stem: str, file_format: str) -> str:
    """Writes one image's probabilities next to its mask.

    Args:
      probabilities: float (H, W) tumour probabilities, or (H, W, C) class probabilities.
      path_stem: the output path without extension.
      file_format: "npy" (float32, the array as given: (H, W) or (H, W, C)) or "png" (16-bit
        grayscale, ``round(p * 65535)``, of the tumour probability; for C classes that is
        ``1 - p(background)``).

    Returns:
      The path written: ``<path_stem>.npy`` or ``<path_stem>.png``.
    """
    if file_format not in PROBABILITY_FORMATS:
        raise ValueError(f"file_format={file_format!r}; expected one of {PROBABILITY_FORMATS}.")
    probabilities = np.asarray(probabilities, np.float32)
    if file_format == "npy":
        np.save(f"{path_stem}.npy", probabilities)
        return f"{path_stem}.npy"
    tumour = probabilities if probabilities.ndim == 2 else 1.0 - probabilities[..., 0]
    levels = np.round(np.clip(tumour, 0.0, 1.0) * 65535.0).astype(np.uint16)
    Image.fromarray(levels).save(f"{path_stem}.png")
    return f"{path_stem}.png"


def _write_settings(
    output_dir: str,
    workdirs: list[str],
    which: str,
    config: ml_collections.ConfigDict,
    settings: PredictionSettings,
    save_probabilities: str | None,
) -> str:
    """Records how the predictions in ``output_dir`` were made (``prediction_settings.json``)."""
    record = {
        "members": member_records(workdirs, which),
        **dataclasses.asdict(settings),
        "save_probabilities": save_probabilities,
        "preprocessing": {key.split(".", 1)[1]: _setting(config, key) for key in ENSEMBLE_SETTINGS},
    }
    path = os.path.join(output_dir, SETTINGS_FILE)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return path


class UnreadableInputsError(ValueError):
    """Prediction inputs that cannot be read as images.

    Attributes:
      unreadable: path -> reason (the file and why, without library internals).
      written: the paths written for the other inputs (empty when nothing was predicted).
    """

    def __init__(self, unreadable: dict[str, str], total: int, written: list[str]):
        self.unreadable = dict(unreadable)
        self.written = list(written)
        outcome = (
            f"skipped; the other {total - len(unreadable)} were predicted"
            if written
            else "nothing was predicted (--skip_unreadable predicts the others)"
        )
        super().__init__(
            f"Cannot read {len(unreadable)} of {total} input(s), {outcome}:\n  "
            + "\n  ".join(f"{path}: {reason}" for path, reason in unreadable.items())
        )


def unreadable_inputs(paths: Sequence[str]) -> dict[str, str]:
    """Decodes every file as prediction will and returns those that fail, with the reason.

    Args:
      paths: image files.

    Returns:
      path -> reason (e.g. ``"Invalid PNG data, size 300"``), in input order; empty when all read.
    """
    unreadable = {}
    for path in paths:
        try:
            data_lib.read_image_file(path)
        except FileNotFoundError:
            unreadable[path] = "file not found"
        except ValueError as e:
            # read_image_file says "Cannot decode image file <path>: <reason>"; keep the reason.
            unreadable[path] = str(e).removeprefix(f"Cannot decode image file {path}: ")
    return unreadable


def predict_files(
    workdir: str | os.PathLike | Sequence[str | os.PathLike],
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    which: str = "best",
    batch_size: int = 8,
    settings: PredictionSettings | None = None,
    save_probabilities: str | None = None,
    skip_unreadable: bool = False,
) -> list[str]:
    """Predicts tumour masks for image files and writes them as PNGs at each input's size.

    For every input ``<stem>.<ext>`` it writes, in ``output_dir``:

    - ``<stem>_mask.png``: uint8 (H, W), 0 = background and 255 = tumour (a multi-class model's
      class ``k`` is written as ``k * (255 // (num_classes - 1))``);
    - ``<stem>_overlay.png``: RGB (H, W, 3), the grayscale image with the predicted contour in red;
    - with ``save_probabilities``, ``<stem>_prob.png`` or ``<stem>_prob.npy`` (see
      `save_probability_map`).

    and once ``prediction_settings.json``: the workdirs and checkpoint steps, the
    `PredictionSettings` and the shared preprocessing.

    Fails fast: every input is decoded before the model is loaded, and if any cannot be read
    nothing is predicted or written; the error lists the failing files with the reason. With
    ``skip_unreadable``, the readable inputs are predicted and written, and the error comes at the
    end, listing the skipped files. Files are then decoded again chunk by chunk, so a folder of
    thousands of images is never held in memory at once.

    Args:
      workdir: a directory written by ``train.py``, or a list of them: an ensemble, whose
        probabilities are averaged (same preprocessing and classes required).
      inputs: a folder (its .png/.jpg/.jpeg/.bmp/.tif/.tiff files, not recursive), a file, or a
        list of folders and files. Files given by name are read whatever their extension.
      output_dir: output folder (created if needed).
      which: checkpoint to use, "best" or "latest".
      batch_size: images per forward pass.
      settings: TTA, threshold and post-processing (default: none of them, threshold 0.5).
      save_probabilities: None, "png" or "npy".
      skip_unreadable: predict the readable inputs even if some cannot be read.

    Returns:
      The per-image paths written, in input order: mask, overlay (and probabilities) of each
      input.

    Raises:
      FileNotFoundError: a missing input, workdir or checkpoint (the message names it).
      UnreadableInputsError: inputs that cannot be read (named, with the reason); with
        ``skip_unreadable`` raised after the others are written (its ``written`` lists them).
      ValueError: an empty folder, two inputs with the same stem, or workdirs that cannot be
        ensembled (the differing setting is named).
    """
    settings = settings or PredictionSettings()
    if save_probabilities not in (None, *PROBABILITY_FORMATS):
        raise ValueError(
            f"save_probabilities={save_probabilities!r}; expected None or one of "
            f"{PROBABILITY_FORMATS}."
        )
    workdirs = [workdir] if isinstance(workdir, str | os.PathLike) else list(workdir)
    workdirs = [os.fspath(w) for w in workdirs]
    paths = _list_inputs(inputs)
    unreadable = unreadable_inputs(paths)
    if unreadable and not skip_unreadable:
        raise UnreadableInputsError(unreadable, len(paths), written=[])
    paths = [path for path in paths if path not in unreadable]
    config, members = load_members(workdirs, which)
    num_classes = int(config.model.num_classes)
    if num_classes > 1 and settings.threshold != 0.5:
        raise ValueError(f"threshold={settings.threshold} needs a one-logit model (argmax here).")
    scale = 255 if num_classes == 1 else 255 // (num_classes - 1)
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for start in range(0, len(paths), _FILES_PER_CHUNK):
        chunk = paths[start : start + _FILES_PER_CHUNK]
        images = [data_lib.read_image_file(path) for path in chunk]
        probabilities = predict_probabilities(
            members, images, config.data, tta=settings.tta, batch_size=batch_size
        )
        for path, image, probs in zip(chunk, images, probabilities, strict=True):
            mask = settings.to_mask(probs)
            stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
            Image.fromarray((mask * scale).astype(np.uint8)).save(f"{stem}_mask.png")
            Image.fromarray(plots.overlay_contours(image, prediction=mask > 0)).save(
                f"{stem}_overlay.png"
            )
            written += [f"{stem}_mask.png", f"{stem}_overlay.png"]
            if save_probabilities:
                written.append(save_probability_map(probs, f"{stem}_prob", save_probabilities))
    _write_settings(output_dir, workdirs, which, config, settings, save_probabilities)
    if unreadable:
        raise UnreadableInputsError(unreadable, len(paths) + len(unreadable), written=written)
    return written
