"""Weight averaging: an exponential moving average (EMA) of the model's variables.

With ``config.ema_decay = d > 0`` the train state carries ``ema``, the average of the parameters
*and* of the BatchNorm running statistics (`bts_jax.train.state.EmaTrainState`), updated after
every optimiser step by `update_ema`; until ``config.ema_start_step`` it equals the weights. The
BatchNorm statistics are averaged with the parameters (as timm's ``ModelEmaV2`` averages a
model's buffers) so that the evaluated model is one average of one model: the raw running
statistics describe the activations of the raw weights, not of their average. Which weights are
evaluated is decided in one place, `bts_jax.workdir.evaluated_variables`. ``config.ema_decay = 0``
(the default) keeps no average: the state, the step and the checkpoints are those of a run from
before weight averaging existed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def update_ema(ema: Any, variables: Any, step: jax.Array, *, decay: float, start_step: int) -> Any:
    """The average after optimiser step ``step``, from the one before and the new weights.

    ``ema_t = w_t`` while ``t <= start_step``, then ``ema_t = decay * ema_{t-1} + (1 - decay) *
    w_t`` (Polyak averaging, `optax.incremental_update` with step size ``1 - decay``). Pure.

    Args:
      ema: the average after step ``step - 1`` (a tree of float32 arrays, any shapes).
      variables: the weights after step ``step``, the same tree as ``ema``.
      step: int32 scalar, the number of optimiser steps done, this one included.
      decay: the EMA decay, in (0, 1).
      start_step: the last step at which the average is set to the weights.

    Returns:
      The new average, the same tree, shapes and dtypes as ``ema``.
    """
    averaged = optax.incremental_update(variables, ema, step_size=1.0 - decay)
    # Before the start the average follows the weights exactly (no blend of the early weights).
    return jax.tree_util.tree_map(
        lambda new, mean: jnp.where(step <= start_step, new, mean), variables, averaged
    )
