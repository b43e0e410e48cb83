"""Prediction with a trained model: masks of any size, from arrays or image files.

Everything here needs only the workdir (``config.json`` and the Orbax checkpoints, read by
`bts_jax.checkpointing.load_trained_model`), never the training data, so a trained workdir copied
to another machine predicts there. Images go through the very preprocessing of training
(`bts_jax.data.preprocess_image`), and predictions are mapped back onto each input's own pixel grid
(`bts_jax.data.restore_original_size`). Figures that need ground truth are in `bts_jax.figures`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from bts_jax import checkpointing, metrics, plots
from bts_jax import data as data_lib
from bts_jax.data.formats import PREDICT_EXTENSIONS, has_extension

# Images decoded at once by predict_files: bounds host memory on folders of thousands of images.
_FILES_PER_CHUNK = 64


# ----------------------------------------------------------------------------- prediction


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """Eval-mode class ids uint8 (B, S, S) of float32 images (B, S, S, 1); one compile per shape."""
    logits = model.apply(variables, images, train=False)
    return metrics.predictions_from_logits(logits).astype(jnp.uint8)


def predict_masks(
    model: nn.Module,
    variables: dict[str, Any],
    images: Sequence[np.ndarray],
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Segments images of any size; each mask comes back on its image's own pixel grid.

    Each image is preprocessed exactly as in evaluation (equalise, resize or pad to
    ``data_config.image_size``), the model runs in eval mode (BatchNorm running statistics) on
    batches of ``batch_size`` (the last one padded, so the forward compiles once), and the class
    map is mapped back to the image's (H, W) with nearest-neighbour sampling.

    Args:
      model: the model of `load_trained_model`.
      variables: ``{"params", "batch_stats"}``.
      images: N uint8 arrays, each (H_i, W_i), (H_i, W_i, 1), or (H_i, W_i, 3|4) (RGB(A),
        converted with the training pipeline's BT.601 luma).
      data_config: the run's ``config.data``.
      batch_size: images per forward pass.

    Returns:
      N uint8 arrays (H_i, W_i) of class ids: {0, 1} (tumour = 1) for a one-logit model,
      ``0..num_classes-1`` otherwise.

    Raises:
      ValueError: an image that is not uint8 or has an unsupported shape (the message gives its
        index).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    grays = [data_lib.as_grayscale(image, i) for i, image in enumerate(images)]
    size = int(data_config["image_size"])
    masks = []
    for start in range(0, len(grays), batch_size):
        chunk = grays[start : start + batch_size]
        batch = np.zeros((batch_size, size, size, 1), np.float32)
        for i, gray in enumerate(chunk):
            batch[i] = data_lib.preprocess_image(gray, data_config)
        predictions = np.asarray(_forward(model, variables, batch))
        masks += [
            data_lib.restore_original_size(pred, gray.shape, data_config)
            for pred, gray in zip(predictions, chunk, strict=False)
        ]
    return masks


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
    workdir: str | os.PathLike,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    which: str = "best",
    batch_size: int = 8,
    skip_unreadable: bool = False,
) -> list[str]:
    """Predicts tumour masks for image files and writes them as PNGs at each input's size.

    For every input ``<stem>.<ext>`` it writes, in ``output_dir``:

    - ``<stem>_mask.png``: uint8 (H, W), 0 = background and 255 = tumour (a multi-class model's
      class ``k`` is written as ``k * (255 // (num_classes - 1))``);
    - ``<stem>_overlay.png``: RGB (H, W, 3), the grayscale image with the predicted contour in red.

    Fails fast: every input is decoded before the model is loaded, and if any cannot be read
    nothing is predicted or written; the error lists the failing files with the reason. With
    ``skip_unreadable``, the readable inputs are predicted and written, and the error comes at the
    end, listing the skipped files. Files are then decoded again chunk by chunk, so a folder of
    thousands of images is never held in memory at once.

    Args:
      workdir: a directory written by ``train.py``.
      inputs: a folder (its .png/.jpg/.jpeg/.bmp/.tif/.tiff files, not recursive), a file, or a
        list of folders and files. Files given by name are read whatever their extension.
      output_dir: output folder (created if needed).
      which: checkpoint to use, "best" or "latest".
      batch_size: images per forward pass.
      skip_unreadable: predict the readable inputs even if some cannot be read.

    Returns:
      The paths written, mask then overlay for each input, in input order.

    Raises:
      FileNotFoundError: a missing input, workdir or checkpoint (the message names it).
      UnreadableInputsError: inputs that cannot be read (named, with the reason); with
        ``skip_unreadable`` raised after the others are written (its ``written`` lists them).
      ValueError: an empty folder, or two inputs with the same stem.
    """
    paths = _list_inputs(inputs)
    unreadable = unreadable_inputs(paths)
    if unreadable and not skip_unreadable:
        raise UnreadableInputsError(unreadable, len(paths), written=[])
    paths = [path for path in paths if path not in unreadable]
    config, model, variables = checkpointing.load_trained_model(workdir, which)
    num_classes = int(config.model.num_classes)
    scale = 255 if num_classes == 1 else 255 // (num_classes - 1)
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for start in range(0, len(paths), _FILES_PER_CHUNK):
        chunk = paths[start : start + _FILES_PER_CHUNK]
        images = [data_lib.read_image_file(path) for path in chunk]
        masks = predict_masks(model, variables, images, config.data, batch_size=batch_size)
        for path, image, mask in zip(chunk, images, masks, strict=True):
            stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
            Image.fromarray((mask * scale).astype(np.uint8)).save(f"{stem}_mask.png")
            Image.fromarray(plots.overlay_contours(image, prediction=mask > 0)).save(
                f"{stem}_overlay.png"
            )
            written += [f"{stem}_mask.png", f"{stem}_overlay.png"]
    if unreadable:
        raise UnreadableInputsError(unreadable, len(paths) + len(unreadable), written=written)
    return written
