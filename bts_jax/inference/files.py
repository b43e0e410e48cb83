"""``predict.py`` on files: image files in, mask, overlay and probability files out."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from PIL import Image

from bts_jax import data as data_lib
from bts_jax import jsonio
from bts_jax.config_tools import get_field
from bts_jax.data.formats import PREDICT_EXTENSIONS, has_extension
from bts_jax.evaluation.figures import overlay_contours
from bts_jax.inference.members import ENSEMBLE_SETTINGS, load_members, member_records
from bts_jax.inference.predict import predict_probabilities
from bts_jax.inference.settings import PredictionSettings

# Images decoded at once by predict_files: bounds host memory on folders of thousands of images.
_FILES_PER_CHUNK = 64


SETTINGS_FILE = "prediction_settings.json"


PROBABILITY_FORMATS = ("png", "npy")


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
        "preprocessing": {
            key.split(".", 1)[1]: get_field(config, key) for key in ENSEMBLE_SETTINGS
        },
    }
    path = os.path.join(output_dir, SETTINGS_FILE)
    return jsonio.write_json(path, record, indent=2)


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
      which: checkpoint to use, "best", "latest" or "step:N".
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
            Image.fromarray(overlay_contours(image, prediction=mask > 0)).save(
                f"{stem}_overlay.png"
            )
            written += [f"{stem}_mask.png", f"{stem}_overlay.png"]
            if save_probabilities:
                written.append(save_probability_map(probs, f"{stem}_prob", save_probabilities))
    _write_settings(output_dir, workdirs, which, config, settings, save_probabilities)
    if unreadable:
        raise UnreadableInputsError(unreadable, len(paths) + len(unreadable), written=written)
    return written
