"""Trained models for prediction: one workdir, or several averaged as an ensemble.

Everything needs only workdirs (``config.json`` and the Orbax checkpoints, read by
`bts_jax.workdir.load_trained_model`), never the training data, so a trained workdir copied to
another machine predicts there. A member trained with ``config.ema_decay > 0`` predicts with the
moving average of its weights, as its validation did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import ml_collections

from bts_jax import workdir as workdir_lib
from bts_jax.config_tools import get_field

# A model with its variables, ``{"params", "batch_stats"}``.
Member = tuple[nn.Module, dict[str, Any]]


# The settings every member of an ensemble must share: the same input and the same output.
ENSEMBLE_SETTINGS = ("data.image_size", "data.equalize", "data.resize_method", "model.num_classes")


def check_ensemble_configs(configs: dict[str, ml_collections.ConfigDict]) -> None:
    """Checks that workdirs can be averaged: same preprocessing and the same classes.

    Args:
      configs: workdir -> its saved config.

    Raises:
      ValueError: naming the first differing setting of `ENSEMBLE_SETTINGS` and every workdir's
        value of it.
    """
    for dotted in ENSEMBLE_SETTINGS:
        values = {workdir: get_field(config, dotted) for workdir, config in configs.items()}
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
      which: checkpoint of each, "best", "latest" or "step:N".

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
    check_ensemble_configs({w: workdir_lib.load_config(w) for w in workdirs})
    loaded = [workdir_lib.load_trained_model(w, which) for w in workdirs]
    return loaded[0][0], [(model, variables) for _, model, variables in loaded]


def member_records(workdirs: Sequence[str | os.PathLike], which: str) -> list[dict[str, Any]]:
    """What to record of the models behind a prediction: workdir, checkpoint step and weights.

    Args:
      workdirs: the members.
      which: their checkpoint choice, "best", "latest" or "step:N".

    Returns:
      One ``{"workdir" (absolute), "which", "step", "weights"}`` per workdir; ``weights`` is
      ``"ema"`` (the moving average of the weights) or ``"raw"`` (`bts_jax.workdir.weights_name`).
    """
    return [
        {
            "workdir": os.path.abspath(w),
            "which": which,
            "step": workdir_lib.resolve_checkpoint(w, which)[1],
            "weights": workdir_lib.weights_name(workdir_lib.load_config(w)),
        }
        for w in workdirs
    ]
