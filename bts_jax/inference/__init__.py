"""Prediction with trained models: probabilities and masks of any size, files, scoring, export.

Everything here needs only workdirs (``config.json`` and the checkpoints), never the training
data, except `compare` and `scoring`, which read ground truth. `members` loads one workdir or an
ensemble; `predict` makes probabilities and masks of images of any size (`tta` views in one
forward pass, `postprocess` on the masks, chosen by `settings.PredictionSettings`); `files` is
``predict.py`` on image files; `scoring` scores settings and ensembles on a split or a labelled
folder; `compare` draws models on their own data; `export` writes deployable artifacts.
"""

from bts_jax.inference.files import (
    PROBABILITY_FORMATS,
    SETTINGS_FILE,
    UnreadableInputsError,
    predict_files,
    save_probability_map,
    unreadable_inputs,
)
from bts_jax.inference.members import (
    ENSEMBLE_SETTINGS,
    Member,
    check_ensemble_configs,
    load_members,
    member_records,
)
from bts_jax.inference.predict import (
    batch_probabilities,
    ensemble_probabilities,
    model_probabilities,
    predict_masks,
    predict_probabilities,
    probabilities_from_logits,
    probabilities_of_images,
)
from bts_jax.inference.settings import PredictionSettings, settings_tag

__all__ = [
    "ENSEMBLE_SETTINGS",
    "PROBABILITY_FORMATS",
    "SETTINGS_FILE",
    "Member",
    "PredictionSettings",
    "UnreadableInputsError",
    "batch_probabilities",
    "check_ensemble_configs",
    "ensemble_probabilities",
    "load_members",
    "member_records",
    "model_probabilities",
    "predict_files",
    "predict_masks",
    "predict_probabilities",
    "probabilities_from_logits",
    "probabilities_of_images",
    "save_probability_map",
    "settings_tag",
    "unreadable_inputs",
]
