"""Which weights of a save are evaluated: the one rule, used by training, evaluation and inference.

A run with ``config.ema_decay > 0`` keeps, next to its raw parameters and BatchNorm statistics, an
exponential moving average of both (``ema``, `bts_jax.train.ema`). Then every evaluation -- the
per-epoch validation that picks the best save, the final evaluation, ``evaluate.py``,
``predict.py``, ``export.py`` and ensembles -- uses the averaged weights; a run without it (every
workdir written before the field existed) uses its raw weights. `evaluated_variables` is that
decision, and nothing else reads ``params`` for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

# What `weights_name` calls each kind of weights, in logs, run summaries and prediction records.
EMA_WEIGHTS = "ema"
RAW_WEIGHTS = "raw"


def ema_decay_of(config: ml_collections.ConfigDict) -> float:
    """``config.ema_decay`` (0.0, averaging off, for a config written before the field existed).

    Args:
      config: experiment config.

    Returns:
      The decay as a float.
    """
    return float(config.get("ema_decay", 0.0))


def ema_start_step_of(config: ml_collections.ConfigDict) -> int:
    """``config.ema_start_step`` (0 for a config written before the field existed).

    Args:
      config: experiment config.

    Returns:
      The optimiser step after which the average starts to lag the weights.
    """
    return int(config.get("ema_start_step", 0))


def ema_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether a run of ``config`` keeps (and evaluates) a moving average of its weights.

    Args:
      config: experiment config.

    Returns:
      True when ``config.ema_decay > 0``.
    """
    return ema_decay_of(config) > 0.0


def weights_name(config: ml_collections.ConfigDict) -> str:
    """The weights a run of ``config`` evaluates: `EMA_WEIGHTS` or `RAW_WEIGHTS`.

    Args:
      config: experiment config.

    Returns:
      ``"ema"`` or ``"raw"``.
    """
    return EMA_WEIGHTS if ema_enabled(config) else RAW_WEIGHTS


def describe_weights(config: ml_collections.ConfigDict) -> str:
    """A phrase for logs and summaries that says which weights are evaluated.

    Args:
      config: experiment config.

    Returns:
      E.g. ``"the EMA of the weights (decay 0.999, averaging after step 100)"`` or
      ``"the raw weights (no EMA)"``.
    """
    if not ema_enabled(config):
        return "the raw weights (no EMA)"
    return (
        f"the EMA of the weights (decay {ema_decay_of(config):g}, averaging after step "
        f"{ema_start_step_of(config)})"
    )


def evaluated_variables(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The model variables to evaluate of a train state or a save: the one rule.

    Args:
      saved: the fields of a train state or of a restored save: ``params``, ``batch_stats`` and,
        when the run averages its weights, ``ema`` (``{"params", "batch_stats"}`` of the same
        trees); an ``ema`` of None, or none at all, means no averaging.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` for ``model.apply(..., train=False)``: the averaged
      ones when ``saved`` has them, else the raw ones.
    """
    ema = saved.get("ema")
    if ema is not None:
        return {"params": ema["params"], "batch_stats": ema["batch_stats"]}
    return {"params": saved["params"], "batch_stats": saved["batch_stats"]}
