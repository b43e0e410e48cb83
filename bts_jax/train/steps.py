"""The pure train and eval steps, and their jit wrappers for a ``("data",)`` mesh.

Both steps are module-level pure functions of (state, global batch); the wrappers bind the model
and the loss function (`bts_jax.train.loss_builder.loss_from_config`) and compile them once with
the state replicated and the batch sharded. `bts_jax.train.seeds` compiles the same train step
vmapped over a leading seed axis of state and batch, for ``config.num_seeds > 1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bts_jax.evaluation import confusion_matrix, predictions_from_logits
from bts_jax.sharding import SEED_AXIS
from bts_jax.train.ema import update_ema
from bts_jax.train.loss_builder import LossFn, loss_from_config
from bts_jax.train.state import TrainState, eval_variables
from bts_jax.workdir.weights import ema_decay_of, ema_start_step_of


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    ema_decay: float = 0.0,
    ema_start_step: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a global batch. Pure; jit it with `make_train_step`.

    Args:
      state: the train state (an `EmaTrainState` when ``ema_decay > 0``).
      batch: ``image`` float32 (B, S, S, 1), ``mask`` int32 (B, S, S), ``valid`` bool (B,).
      model: the segmentation model.
      optimizer: the optax transformation of ``state.opt_state``.
      loss_fn: ``(logits, mask, valid) -> (loss, metrics)``
        (`bts_jax.train.loss_builder.build_loss`).
      ema_decay: decay of the weights' moving average (`bts_jax.train.ema.update_ema`); 0 keeps
        none, and the step is exactly the step of a run without averaging.
      ema_start_step: the last step at which the average is set to the weights.

    Returns:
      The new state and float32 scalar metrics: ``loss``, the loss's parts (``cross_entropy``
      and ``dice_loss`` for the default ``bce_dice``) and ``grad_norm`` (the learning rate is a
      function of the step: the host logs it).
    """
    # Reserved for stochastic layers (dropout): one fresh key per step, restored with the step.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def objective(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": step_rng},
        )
        loss, parts = loss_fn(logits, batch["mask"], batch["valid"])
        # A model without BatchNorm (config.model.norm) has no running statistics to update.
        return loss, (updates.get("batch_stats", {}), parts)

    (loss, (batch_stats, parts)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    if ema_decay > 0:
        average = update_ema(
            state.ema,
            {"params": params, "batch_stats": batch_stats},
            new_state.step,
            decay=ema_decay,
            start_step=ema_start_step,
        )
        new_state = new_state.replace(ema=average)
    step_metrics = {**parts, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    return new_state, step_metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    loss_fn: LossFn,
    with_predictions: bool = True,
) -> dict[str, jax.Array]:
    """Evaluates a global batch with the running BatchNorm statistics, if any. Pure.

    The weights are those `bts_jax.train.state.eval_variables` chooses: the moving average of
    the weights when the state has one, else the weights.

    Args:
      state: the train state.
      batch: as in `train_step`; entries with ``valid=False`` count for nothing.
      model: the segmentation model.
      loss_fn: as in `train_step`.
      with_predictions: also return the class maps (for per-image metrics); without them only
        the sums leave the devices.

    Returns:
      ``loss_sum`` (the batch loss times its number of valid images), ``num_valid``,
      ``confusion`` int32 (K, K), and with ``with_predictions`` ``predictions`` uint8 (B, S, S)
      class ids.
    """
    logits = model.apply(eval_variables(state), batch["image"], train=False)
    loss, _ = loss_fn(logits, batch["mask"], batch["valid"])
    predictions = predictions_from_logits(logits)
    num_valid = jnp.sum(batch["valid"]).astype(jnp.float32)
    outputs = {
        "loss_sum": loss * num_valid,
        "num_valid": num_valid,
        "confusion": confusion_matrix(
            predictions, batch["mask"], model.num_classes, batch["valid"]
        ),
    }
    if with_predictions:
        outputs["predictions"] = predictions.astype(jnp.uint8)
    return outputs


def bind_train_step(
    config: ml_collections.ConfigDict, model: nn.Module, optimizer: optax.GradientTransformation
) -> Callable:
    """`train_step` with the model, optimiser, the config's loss function and EMA bound.

    Args:
      config: experiment config (``loss``, ``ema_decay``, ``ema_start_step``).
      model: the segmentation model.
      optimizer: the optax transformation.

    Returns:
      A function ``(state, global_batch) -> (state, metrics)`` to jit.
    """
    return functools.partial(
        train_step,
        model=model,
        optimizer=optimizer,
        loss_fn=loss_from_config(config.loss),
        ema_decay=ema_decay_of(config),
        ema_start_step=ema_start_step_of(config),
    )


def make_train_step(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable:
    """Compiles `train_step` for ``mesh``: batch sharded, state replicated and donated.

    Args:
      config: experiment config (``loss``).
      model: the segmentation model.
      optimizer: the optax transformation.
      mesh: device mesh.

    Returns:
      A jitted function ``(state, global_batch) -> (state, metrics)``.
    """
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    step = bind_train_step(config, model, optimizer)
    return jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_seeds_train_step(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable:
    """Compiles `train_step` vmapped over the seed axis, for ``config.num_seeds > 1``.

    Each seed's slice of the state takes the step a single run would take on its slice of the
    batch (its own BatchNorm statistics, gradients and update): `jax.vmap` batches the seeds, and
    their convolutions become one grouped convolution, equal to the single run's up to float
    rounding.

    Args:
      config: experiment config (``loss``).
      model: the segmentation model.
      optimizer: the optax transformation.
      mesh: a `bts_jax.sharding.make_seed_mesh` mesh.

    Returns:
      A jitted function ``(state, batch) -> (state, metrics)``: state leaves (K, ...) sharded over
      "seed" and donated, batch (K, B, ...) sharded over "seed" and "data", metrics (K,) float32.
    """
    seeded = NamedSharding(mesh, P(SEED_AXIS))
    batch = NamedSharding(mesh, P(SEED_AXIS, "data"))
    step = bind_train_step(config, model, optimizer)
    seeds_step = jax.vmap(step)
    if mesh.shape[SEED_AXIS] > 1:
        # Seeds never exchange anything: each group of devices steps its own seeds (vmapped), and
        # only the "data" axis is left to the compiler. Left to partition the seed axis too, XLA
        # rejects the vmapped (grouped) 1x1 head convolution (jax 0.10.2, 2x4 CPU devices).
        seeds_step = jax.shard_map(
            seeds_step,
            mesh=mesh,
            in_specs=(P(SEED_AXIS), P(SEED_AXIS)),
            out_specs=(P(SEED_AXIS), P(SEED_AXIS)),
            axis_names={SEED_AXIS},
        )
    return jax.jit(
        seeds_step,
        in_shardings=(seeded, batch),
        out_shardings=(seeded, seeded),
        donate_argnums=0,
    )


def make_eval_step(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    mesh: Mesh,
    *,
    with_predictions: bool = True,
) -> Callable:
    """Compiles `eval_step` for ``mesh``; predictions (if any) stay sharded like the batch.

    Args:
      config: experiment config (``loss``).
      model: the segmentation model.
      mesh: device mesh.
      with_predictions: see `eval_step`.

    Returns:
      A jitted function ``(state, global_batch) -> outputs`` (see `eval_step`).
    """
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    step = functools.partial(
        eval_step,
        model=model,
        loss_fn=loss_from_config(config.loss),
        with_predictions=with_predictions,
    )
    out_shardings = {"loss_sum": replicated, "num_valid": replicated, "confusion": replicated}
    if with_predictions:
        out_shardings["predictions"] = data
    return jax.jit(step, in_shardings=(replicated, data), out_shardings=out_shardings)
