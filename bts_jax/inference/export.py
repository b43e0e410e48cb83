"""Deployment: a trained model as a `jax.export` artifact and a TF SavedModel, and their loader.

`export_workdirs` writes, into one folder:

- ``model.jax_export``: the serialized `jax.export.Exported` (StableHLO, for CPU and CUDA) of the
  function that maps preprocessed images float32 (b, S, S, 1) in [0, 1] to probabilities float32
  (b, S, S, C), with a symbolic batch size ``b``. The weights are constants inside it; TTA and
  ensembles, if asked for, are part of the function.
- ``preprocessing.json``: what the function expects and returns -- image size, equalisation,
  resize method, classes, threshold, TTA -- and where it came from (workdirs, checkpoint steps).
- ``saved_model/`` (optional): the same function as a TensorFlow SavedModel (`jax2tf`, serving
  signature ``serving_default``: ``images`` -> ``probabilities``) for TF Serving.
- ``model.tflite`` (optional): the same function for TFLite, with the batch fixed to 1.

`load_exported` runs the artifact from these two files alone: no config, checkpoint or Flax model
is built; images of any size go through `bts_jax.data`'s preprocessing as in training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from bts_jax import jsonio
from bts_jax.inference import postprocess
from bts_jax.inference import tta as tta_lib
from bts_jax.inference.members import Member, load_members, member_records
from bts_jax.inference.predict import ensemble_probabilities, probabilities_of_images
from bts_jax.inference.settings import PredictionSettings

EXPORT_FILE = "model.jax_export"
SETTINGS_FILE = "preprocessing.json"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
PLATFORMS = ("cpu", "cuda")
FORMAT_VERSION = 1

# The fields of preprocessing.json the loader needs.
_REQUIRED = ("image_size", "equalize", "resize_method", "num_classes", "threshold")


def _portable(members: Sequence[Member]) -> list[Member]:
    """``members`` with XLA's own convolutions and their weights on the host, ready to trace.

    An artifact runs on any platform and machine, and jax.export refuses custom calls that carry
    no compatibility guarantee, such as the oneDNN extension's (``config.model.conv_impl``).
    """
    return [
        (model.clone(conv_impl="xla"), jax.device_get(variables)) for model, variables in members
    ]


def export_probabilities(
    members: Sequence[Member],
    image_size: int,
    *,
    tta: str = "none",
    platforms: Sequence[str] = PLATFORMS,
) -> jax_export.Exported:
    """Exports `bts_jax.inference.ensemble_probabilities` with the weights baked in.

    Args:
      members: ``(model, variables)`` pairs (one for a single model).
      image_size: the models' input side S.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value, part of the exported function.
      platforms: lowering platforms, e.g. ("cpu", "cuda"); the artifact runs on any of them.

    Returns:
      The `jax.export.Exported`: float32 (b, S, S, 1) -> float32 (b, S, S, C), b symbolic (>= 1),
      computed with XLA's convolutions whatever the models' ``conv_impl`` (as are the
      SavedModel and TFLite files).
    """
    tta_lib.check_tta(tta)
    members = _portable(members)

    def probabilities(images):
        return ensemble_probabilities(members, images, tta)

    (batch,) = jax_export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 1), jnp.float32)
    return jax_export.export(jax.jit(probabilities), platforms=tuple(platforms))(spec)


def save_saved_model(
    members: Sequence[Member],
    image_size: int,
    path: str | os.PathLike,
    *,
    tta: str = "none",
    platforms: Sequence[str] = PLATFORMS,
) -> str:
    """Writes the function of `export_probabilities` as a TensorFlow SavedModel (via `jax2tf`).

    The SavedModel calls the same StableHLO (a ``XlaCallModule`` op), so TensorFlow runs it with
    XLA on CPU or GPU. Its ``serving_default`` signature takes ``images`` float32 (None, S, S, 1)
    and returns ``{"probabilities": float32 (None, S, S, C)}``; ``probabilities(images)`` is the
    same as a plain function.

    Args:
      members: ``(model, variables)`` pairs.
      image_size: the models' input side S.
      path: the SavedModel folder to write.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value.
      platforms: lowering platforms.

    Returns:
      ``path``.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    members = _portable(members)
    converted = jax2tf.convert(
        lambda images: ensemble_probabilities(members, images, tta),
        polymorphic_shapes=[f"(b, {image_size}, {image_size}, 1)"],
        native_serialization_platforms=tuple(platforms),
        with_gradient=False,
    )
    module = tf.Module()
    module.probabilities = tf.function(
        converted,
        autograph=False,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 1], tf.float32, "images")],
    )
    serving = tf.function(
        lambda images: {"probabilities": module.probabilities(images)},
        autograph=False,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 1], tf.float32, "images")],
    )
    path = os.fspath(path)
    tf.saved_model.save(module, path, signatures={"serving_default": serving})
    return path


def save_tflite(
    members: Sequence[Member],
    image_size: int,
    path: str | os.PathLike,
    *,
    tta: str = "none",
) -> str:
    """Writes the function of `export_probabilities` as a TFLite flatbuffer with batch size 1.

    TFLite cannot take the symbolic batch: the converter rejects the dynamic gather of the ECA
    blocks (``'vhlo.dynamic_gather_v1' op is not part of the vhlo support yet``), so the batch is
    fixed to one image. Input float32 (1, S, S, 1), output float32 (1, S, S, C).

    Args:
      members: ``(model, variables)`` pairs.
      image_size: the models' input side S.
      path: the ``.tflite`` file to write.
      tta: a `bts_jax.inference.tta.TTA_CHOICES` value.

    Returns:
      ``path``.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    members = _portable(members)
    converted = jax2tf.convert(
        lambda images: ensemble_probabilities(members, images, tta),
        native_serialization_platforms=("cpu",),
        with_gradient=False,
    )
    module = tf.Module()
    module.probabilities = tf.function(
        converted,
        autograph=False,
        input_signature=[tf.TensorSpec([1, image_size, image_size, 1], tf.float32, "images")],
    )
    concrete = module.probabilities.get_concrete_function()
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module).convert()
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def export_workdirs(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    which: str = "best",
    tta: str = "none",
    threshold: float = 0.5,
    platforms: Sequence[str] = PLATFORMS,
    saved_model: bool = True,
    tflite: bool = False,
) -> list[str]:
    """Exports a trained workdir (or an ensemble of them) for deployment.

    Args:
      workdirs: a directory written by ``train.py``, or several (probabilities averaged; see
        `bts_jax.inference.load_members`).
      output_dir: the folder to write (created if needed).
      which: checkpoint, "best", "latest" or "step:N".
      tta: TTA baked into the exported function.
      threshold: the decision threshold recorded for one-logit models.
      platforms: lowering platforms of both artifacts.
      saved_model: also write the TF SavedModel.
      tflite: also write ``model.tflite`` (batch size 1, CPU; see `save_tflite`).

    Returns:
      The paths written: the artifact, the JSON (and the SavedModel folder, the TFLite file).

    Raises:
      FileNotFoundError: a missing workdir or checkpoint.
      ValueError: workdirs that cannot be ensembled, or a threshold outside (0, 1).
    """
    settings = PredictionSettings(tta=tta, threshold=threshold)
    workdirs = [workdirs] if isinstance(workdirs, str | os.PathLike) else list(workdirs)
    workdirs = [os.fspath(w) for w in workdirs]
    config, members = load_members(workdirs, which)
    size = int(config.data.image_size)
    num_classes = int(config.model.num_classes)
    if num_classes > 1 and threshold != 0.5:
        raise ValueError(f"threshold={threshold} needs a one-logit model (argmax here).")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    exported = export_probabilities(members, size, tta=tta, platforms=platforms)
    written = [os.path.join(output_dir, EXPORT_FILE)]
    with open(written[0], "wb") as f:
        f.write(exported.serialize())
    record = {
        "format_version": FORMAT_VERSION,
        "image_size": size,
        "equalize": bool(config.data.equalize),
        "resize_method": str(config.data.resize_method),
        "num_classes": num_classes,
        "threshold": settings.threshold,
        "tta": settings.tta,
        "input": {"shape": ["b", size, size, 1], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {
            "shape": ["b", size, size, num_classes],
            "dtype": "float32",
            "meaning": "sigmoid of the tumour logit" if num_classes == 1 else "class softmax",
        },
        "platforms": list(platforms),
        "members": member_records(workdirs, which),
        "files": {
            "jax_export": EXPORT_FILE,
            "saved_model": SAVED_MODEL_DIR if saved_model else None,
            "tflite": TFLITE_FILE if tflite else None,
        },
    }
    written.append(os.path.join(output_dir, SETTINGS_FILE))
    jsonio.write_json(written[1], record, indent=2)
    if saved_model:
        written.append(
            save_saved_model(
                members,
                size,
                os.path.join(output_dir, SAVED_MODEL_DIR),
                tta=tta,
                platforms=platforms,
            )
        )
    if tflite:
        written.append(save_tflite(members, size, os.path.join(output_dir, TFLITE_FILE), tta=tta))
    return written


class ExportedModel:
    """A deserialized artifact of `export_workdirs` with its preprocessing: predicts any image.

    Attributes:
      exported: the `jax.export.Exported` (float32 (b, S, S, 1) -> float32 (b, S, S, C)).
      settings: the contents of ``preprocessing.json``.
    """

    def __init__(self, exported: jax_export.Exported, settings: dict[str, Any]):
        self.exported = exported
        self.settings = settings

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing, in the form `bts_jax.data.preprocess_image` reads."""
        return {key: self.settings[key] for key in ("image_size", "equalize", "resize_method")}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The exported function on preprocessed float32 (B, S, S, 1): (B, S, S, C) numpy."""
        return np.asarray(self.exported.call(jnp.asarray(images, jnp.float32)))

    def predict_probabilities(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8
    ) -> list[np.ndarray]:
        """Probability maps at each image's own size, as `inference.predict_probabilities` makes.

        Args:
          images: N uint8 arrays (H_i, W_i), (H_i, W_i, 1) or (H_i, W_i, 3|4).
          batch_size: images per call (batches are padded: one compilation per batch size).

        Returns:
          N float32 arrays: (H_i, W_i) tumour probabilities, or (H_i, W_i, C) for C classes.
        """
        return probabilities_of_images(self, images, self.data_config, batch_size=batch_size)

    def predict_masks(
        self,
        images: Sequence[np.ndarray],
        *,
        batch_size: int = 8,
        keep_largest: bool = False,
        min_size: int = 0,
    ) -> list[np.ndarray]:
        """Masks at each image's own size, with the recorded threshold and optional clean-up.

        Args:
          images: N uint8 arrays (H_i, W_i), (H_i, W_i, 1) or (H_i, W_i, 3|4).
          batch_size: images per call.
          keep_largest: keep only the largest foreground component.
          min_size: drop foreground components under this many pixels.

        Returns:
          N uint8 (H_i, W_i) class maps.
        """
        threshold = float(self.settings["threshold"])
        return [
            postprocess.postprocess_mask(
                postprocess.class_map(p, threshold), keep_largest=keep_largest, min_size=min_size
            )
            for p in self.predict_probabilities(images, batch_size=batch_size)
        ]


def load_exported(directory: str | os.PathLike) -> ExportedModel:
    """Loads what `export_workdirs` wrote, without building or restoring a Flax model.

    Args:
      directory: the export folder (``model.jax_export`` and ``preprocessing.json``).

    Returns:
      An `ExportedModel`.

    Raises:
      FileNotFoundError: a missing file (named).
      ValueError: a ``preprocessing.json`` without a needed field, or of a newer format.
    """
    directory = os.fspath(directory)
    paths = {name: os.path.join(directory, name) for name in (EXPORT_FILE, SETTINGS_FILE)}
    for path in paths.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: is {directory} an export.py output?")
    with open(paths[SETTINGS_FILE]) as f:
        settings = json.load(f)
    missing = [key for key in _REQUIRED if key not in settings]
    if missing:
        raise ValueError(f"{paths[SETTINGS_FILE]} lacks {missing}.")
    if settings.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{paths[SETTINGS_FILE]} has format_version {settings['format_version']}; this "
            f"bts_jax reads up to {FORMAT_VERSION}."
        )
    with open(paths[EXPORT_FILE], "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
    return ExportedModel(exported, settings)
