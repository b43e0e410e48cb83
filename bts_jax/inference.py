"""Inference with a trained workdir: load the model, predict masks of any size, compare two models.

Everything here reads only the workdir (``config.json`` and the Orbax checkpoints), never the
training data, so a trained workdir copied to another machine predicts there: the model is rebuilt
from the saved config and only ``params``, ``batch_stats`` and ``step`` are read from the
checkpoint (the optimiser state is left on disk). Images go through the very preprocessing of
training (`bts_jax.data.preprocess_image`), and predictions are mapped back onto each input's own
pixel grid (`bts_jax.data.restore_original_size`).

Only `compare_workdirs` reads a dataset: the ground truth of the images it shows.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from PIL import Image, UnidentifiedImageError

from bts_jax import data as data_lib
from bts_jax import metrics, plots
from bts_jax.data import preprocessing
from bts_jax.models import build_model

CONFIG_FILE = "config.json"
# Extensions predict_files picks up in a folder (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# TensorFlow's decoders (used by training) do not read TIFF, so those files go through Pillow.
_TIFF_EXTENSIONS = (".tif", ".tiff")
# Data settings that decide which images a split holds: two workdirs that differ in one of them
# were validated on different images.
_SPLIT_SETTINGS = (
    "source",
    "data_dir",
    "split_method",
    "val_fraction",
    "split_gap",
    "num_folds",
    "fold",
    "subset_size",
)
# Images decoded at once by predict_files: bounds host memory on folders of thousands of images.
_FILES_PER_CHUNK = 64


# ----------------------------------------------------------------------------- loading


def _lists_to_tuples(value: Any) -> Any:
    # JSON turned the config's tuples (e.g. model.features) into lists; give them back.
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads the config a workdir was trained with (``<workdir>/config.json``).

    Args:
      workdir: a directory written by ``train.py``.

    Returns:
      The run's ConfigDict (JSON lists turned back into tuples).

    Raises:
      FileNotFoundError: ``workdir`` does not exist or holds no ``config.json`` (the message
        names it).
    """
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"Workdir not found: {workdir}")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{workdir} is not a bts_jax workdir: it has no {CONFIG_FILE}. Pass the --workdir "
            "that train.py wrote."
        )
    with open(path) as f:
        return ml_collections.ConfigDict(_lists_to_tuples(json.load(f)))


def _checkpoint_step(workdir: str, which: str) -> tuple[str, int]:
    """The checkpoint folder and step to restore: best, falling back to latest."""
    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r}; expected 'best' or 'latest'.")
    folders = ["best", "checkpoints"] if which == "best" else ["checkpoints"]
    for name in folders:
        directory = os.path.join(os.path.abspath(workdir), name)
        if not os.path.isdir(directory):
            continue
        # The folder exists and nothing is saved, so the manager creates or deletes nothing.
        with ocp.CheckpointManager(directory) as manager:
            step = manager.latest_step()
        if step is not None:
            if name != folders[0]:
                logging.warning(
                    "%s has no best checkpoint; using the latest (step %d).", workdir, step
                )
            return directory, step
    raise FileNotFoundError(
        f"No checkpoint in {workdir} (looked in {', '.join(folders)}/): train it first."
    )


def load_trained_model(
    workdir: str | os.PathLike, which: str = "best"
) -> tuple[ml_collections.ConfigDict, nn.Module, dict[str, Any]]:
    """Rebuilds a workdir's model and restores its weights, without touching the training data.

    Args:
      workdir: a directory written by ``train.py``.
      which: "best" (highest validation mIoU; falls back to the latest checkpoint when the run
        never evaluated) or "latest".

    Returns:
      ``(config, model, variables)``: the run's config, the unbound model, and
      ``{"params": ..., "batch_stats": ...}`` on the default device, ready for
      ``model.apply(variables, x, train=False)``.

    Raises:
      FileNotFoundError: not a workdir, or no checkpoint in it.
      ValueError: the checkpoint does not fit the model of the saved config.
    """
    workdir = os.fspath(workdir)
    config = load_config(workdir)
    model = build_model(config.model, dtype=config.dtype)
    directory, step = _checkpoint_step(workdir, which)
    size = int(config.data.image_size)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)), train=False)
    )
    # Partial restore of the TrainState's fields we need; ShapeDtypeStructs without sharding come
    # back as numpy, so the device layout of training (8 GPUs, 2 hosts...) does not matter here.
    target = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": shapes["params"],
        "batch_stats": shapes.get("batch_stats", {}),
    }
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
    )
    with ocp.CheckpointManager(directory) as manager:
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=target, restore_args=restore_args, partial_restore=True
                    )
                ),
            )["state"]
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"The checkpoint {directory}/{step} does not match the model of "
                f"{os.path.join(workdir, CONFIG_FILE)}: {e}"
            ) from e
    logging.info("Restored %s step %d.", directory, int(restored["step"]))
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    return config, model, jax.device_put(variables)


# ----------------------------------------------------------------------------- prediction


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """Eval-mode class ids uint8 (B, S, S) of float32 images (B, S, S, 1); one compile per shape."""
    logits = model.apply(variables, images, train=False)
    return metrics.predictions_from_logits(logits).astype(jnp.uint8)


def _as_grayscale(image: np.ndarray, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images[{index}] must be uint8, got {image.dtype}.")
    if image.ndim == 3 and image.shape[-1] in (2, 3, 4):
        # Same luma as the training decoder, so an RGB array equals the gray file it came from.
        return preprocessing.to_grayscale(preprocessing.tf.constant(image)).numpy()
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(
            f"images[{index}] must be (H, W), (H, W, 1) or (H, W, 3|4), got {image.shape}."
        )
    return image


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
    grays = [_as_grayscale(image, i) for i, image in enumerate(images)]
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


def _read_image(path: str) -> np.ndarray:
    """Decodes a file to uint8 grayscale (H, W) like training; TIFF through Pillow."""
    if os.path.splitext(path)[1].lower() not in _TIFF_EXTENSIONS:
        return data_lib.load_grayscale(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit scans: keep the top 8 bits, as the PNG decoder does.
                return (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot decode image file {path}: {e}") from None
    return _as_grayscale(array[..., None] if array.ndim == 2 else array, 0)


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
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                and not name.startswith(".")
                and os.path.isfile(os.path.join(item, name))
            ]
            if not found:
                raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {item}.")
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


def predict_files(
    workdir: str | os.PathLike,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    which: str = "best",
    batch_size: int = 8,
) -> list[str]:
    """Predicts tumour masks for image files and writes them as PNGs at each input's size.

    For every input ``<stem>.<ext>`` it writes, in ``output_dir``:

    - ``<stem>_mask.png``: uint8 (H, W), 0 = background and 255 = tumour (a multi-class model's
      class ``k`` is written as ``k * (255 // (num_classes - 1))``);
    - ``<stem>_overlay.png``: RGB (H, W, 3), the grayscale image with the predicted contour in red.

    Fails fast: every input is decoded before the model is loaded, and if any cannot be read
    nothing is predicted or written; the error lists the failing files. Files are then decoded
    again chunk by chunk, so a folder of thousands of images is never held in memory at once.

    Args:
      workdir: a directory written by ``train.py``.
      inputs: a folder (its .png/.jpg/.jpeg/.bmp/.tif/.tiff files, not recursive), a file, or a
        list of folders and files. Files given by name are read whatever their extension.
      output_dir: output folder (created if needed).
      which: checkpoint to use, "best" or "latest".
      batch_size: images per forward pass.

    Returns:
      The paths written, mask then overlay for each input, in input order.

    Raises:
      FileNotFoundError: a missing input, workdir or checkpoint (the message names it).
      ValueError: an empty folder, two inputs with the same stem, or unreadable files (named).
    """
    paths = _list_inputs(inputs)
    errors = []
    for path in paths:
        try:
            _read_image(path)
        except (ValueError, FileNotFoundError) as e:
            errors.append(str(e))
    if errors:
        raise ValueError(
            f"Cannot read {len(errors)} of {len(paths)} input(s); nothing was predicted:\n  "
            + "\n  ".join(errors)
        )
    config, model, variables = load_trained_model(workdir, which)
    num_classes = int(config.model.num_classes)
    scale = 255 if num_classes == 1 else 255 // (num_classes - 1)
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for start in range(0, len(paths), _FILES_PER_CHUNK):
        chunk = paths[start : start + _FILES_PER_CHUNK]
        images = [_read_image(path) for path in chunk]
        masks = predict_masks(model, variables, images, config.data, batch_size=batch_size)
        for path, image, mask in zip(chunk, images, masks, strict=True):
            stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
            Image.fromarray((mask * scale).astype(np.uint8)).save(f"{stem}_mask.png")
            Image.fromarray(plots.overlay_contours(image, prediction=mask > 0)).save(
                f"{stem}_overlay.png"
            )
            written += [f"{stem}_mask.png", f"{stem}_overlay.png"]
    return written


# ----------------------------------------------------------------------------- comparison


def _decode(source: str | bytes) -> np.ndarray:
    if isinstance(source, bytes):  # TFDS examples carry the encoded bytes
        return preprocessing.decode_grayscale(preprocessing.tf.constant(source)).numpy()
    return data_lib.load_grayscale(source)


def _split_ids(workdir: str, config: ml_collections.ConfigDict, split: str) -> list[str]:
    """The split's ids as the run recorded them (data_split.json), else recomputed."""
    path = os.path.join(workdir, "data_split.json")
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f)
        if split in recorded:
            return list(recorded[split])
    ids = data_lib.get_split_ids(config)
    if split not in ids:
        raise ValueError(f"split={split!r}; expected one of {sorted(ids)}.")
    return ids[split]


def _split_images(
    workdir: str, config: ml_collections.ConfigDict, split: str, num_images: int
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The first ``num_images`` (ids, uint8 images, binary masks) of a workdir's split."""
    ids = _split_ids(workdir, config, split)[:num_images]
    if not ids:
        raise ValueError(f"{workdir}'s {split} split is empty.")
    examples = {e.id: e for e in data_lib.get_examples(config.data, validate=False)}
    missing = [i for i in ids if i not in examples]
    if missing:
        raise ValueError(
            f"Ids {missing} of {workdir}'s {split} split are not in its data source "
            f"(config.data.source={config.data.source!r}, data_dir={config.data.data_dir!r})."
        )
    images = [_decode(examples[i].image) for i in ids]
    # Same binarisation as training (> 127 is tumour).
    truths = [(_decode(examples[i].mask) > 127).astype(np.uint8) for i in ids]
    return ids, images, truths


def save_split_predictions(
    workdir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    num_images: int = 8,
    split: str = "validation",
    which: str = "best",
) -> list[str]:
    """Draws a trained model's predictions on the first images of its own split, for looking at.

    Each PNG shows the image at its original size with the ground-truth contour in green and the
    predicted contour in red (:func:`plots.overlay_contours`).

    Args:
      workdir: a trained workdir.
      output_dir: where to write ``<id>.png``; default ``workdir/predictions``.
      num_images: how many images of the split (fewer if the split is smaller).
      split: "validation" or "train".
      which: checkpoint, "best" or "latest".

    Returns:
      The written paths, in split order.
    """
    workdir = os.fspath(workdir)
    output_dir = os.fspath(output_dir or os.path.join(workdir, "predictions"))
    config, model, variables = load_trained_model(workdir, which)
    ids, images, truths = _split_images(workdir, config, split, num_images)
    predictions = predict_masks(model, variables, images, config.data)
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for example_id, image, truth, prediction in zip(ids, images, truths, predictions, strict=True):
        path = os.path.join(output_dir, f"{example_id}.png")
        Image.fromarray(plots.overlay_contours(image, truth, prediction)).save(path)
        paths.append(path)
    return paths


def compare_workdirs(
    workdir_a: str | os.PathLike,
    workdir_b: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    num_images: int = 8,
    names: Sequence[str] | None = None,
    split: str = "validation",
    which: str = "best",
) -> str:
    """Draws two trained models' predictions side by side (the paper's figure 8) as one PNG.

    The images are the first ``num_images`` ids of ``workdir_a``'s split (as recorded in its
    ``data_split.json``), read from ``workdir_a``'s data source at their original size. Rows:
    images; columns: image, ground truth, model A, model B. Each model preprocesses the images
    with its own data config, so models trained at different resolutions compare fairly.

    Args:
      workdir_a: the first trained workdir; its split and data source give the images.
      workdir_b: the second trained workdir.
      output_path: PNG to write (parent folders are created).
      num_images: rows of the figure (fewer if the split is smaller).
      names: the two column titles; default the workdirs' folder names.
      split: "validation" or "train".
      which: checkpoint of both models, "best" or "latest".

    Returns:
      ``output_path``.

    Warns:
      UserWarning: the two workdirs were split differently (different data settings), so the
        images may be training images of model B.

    Raises:
      FileNotFoundError: a workdir, checkpoint or data file is missing.
      ValueError: ``num_images < 1``, bad ``names``, or ids of the split missing from the source.
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1.")
    workdir_a, workdir_b = os.fspath(workdir_a), os.fspath(workdir_b)
    if names is None:
        names = [os.path.basename(os.path.normpath(w)) for w in (workdir_a, workdir_b)]
    if len(names) != 2:
        raise ValueError(f"names must hold two titles, got {list(names)}.")
    config_a, config_b = load_config(workdir_a), load_config(workdir_b)
    differ = [
        f"data.{key}: {config_a.data.get(key)!r} vs {config_b.data.get(key)!r}"
        for key in _SPLIT_SETTINGS
        if config_a.data.get(key) != config_b.data.get(key)
    ]
    if config_a.get("seed") != config_b.get("seed"):
        differ.append(f"seed: {config_a.get('seed')!r} vs {config_b.get('seed')!r}")
    if differ:
        warnings.warn(
            f"{workdir_a} and {workdir_b} were trained on different data splits ("
            + "; ".join(differ)
            + f"). The figure shows {workdir_a}'s {split} images, which "
            f"{workdir_b} may have trained on.",
            stacklevel=2,
        )
    _, images, truths = _split_images(workdir_a, config_a, split, num_images)
    predictions = []
    for workdir in (workdir_a, workdir_b):
        config, model, variables = load_trained_model(workdir, which)
        predictions.append(predict_masks(model, variables, images, config.data))
    return plots.save_comparison_figure(
        images, truths, predictions[0], predictions[1], os.fspath(output_path), names=tuple(names)
    )
