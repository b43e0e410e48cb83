"""The optimiser (``config.optimizer.name``) and its learning-rate schedule, by name.

A registered optimiser is ``optimizer(learning_rate, **arguments) ->
optax.GradientTransformation`` (`bts_jax.train.registry.register_optimizer`): ``adam`` (the
default, the paper's Adam at 1e-4), ``adamw`` (decoupled weight decay, optionally not on norms and
biases), ``sgd`` (momentum, Nesterov) and ``lamb``; or an import path ``package.module:function``.
Arguments go in the name, ``adamw(weight_decay=0.05,decay_norms_and_biases=false)``;
``config.optimizer.weight_decay`` is the default of every optimiser that takes ``weight_decay``.
``config.optimizer.grad_clip_norm`` clips the global gradient norm before any of them.
Schedules: `bts_jax.train.schedules`.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from bts_jax.train.registry import OPTIMIZERS, parse_call, register_optimizer
from bts_jax.train.schedules import create_schedule

WHERE = "config.optimizer.name"


def kernels_only(params) -> object:
    """The weight-decay mask that leaves norms and biases alone: True for leaves of rank >= 2.

    Biases and the scales / offsets of normalisation layers are vectors, convolution and dense
    kernels have rank 2 or more (Loshchilov & Hutter 2019 decay the weights only).

    Args:
      params: a parameter tree.

    Returns:
      A tree of bools of the same structure.
    """
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def _decay_mask(decay_norms_and_biases: bool):
    return None if decay_norms_and_biases else kernels_only


def adam(
    learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015), optax's defaults.

    Args:
      learning_rate: the schedule.
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.

    Returns:
      ``optax.adam``.
    """
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    decay_norms_and_biases: bool = True,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.

    Args:
      learning_rate: the schedule.
      weight_decay: the decay rate (``config.optimizer.weight_decay`` unless the name sets it).
      decay_norms_and_biases: decay every parameter (True, as before the registry) or only
        kernels of rank >= 2 (`kernels_only`).
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.

    Returns:
      ``optax.adamw``.
    """
    return optax.adamw(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=_decay_mask(decay_norms_and_biases),
    )


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decay_norms_and_biases: bool = True,
) -> optax.GradientTransformation:
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay.

    nnU-Net trains with ``sgd(momentum=0.99,nesterov=true)``, learning rate 1e-2 and ``poly``.

    Args:
      learning_rate: the schedule.
      momentum: the momentum (0 = plain SGD).
      nesterov: Nesterov's momentum.
      weight_decay: ``weight_decay * params`` added to the gradients (before momentum).
      decay_norms_and_biases: decay every parameter, or only kernels (`kernels_only`).

    Returns:
      ``optax.sgd``, after ``optax.add_decayed_weights`` when ``weight_decay > 0``.
    """
    optimizer = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
    if not weight_decay:
        return optimizer
    return optax.chain(
        optax.add_decayed_weights(weight_decay, _decay_mask(decay_norms_and_biases)), optimizer
    )


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    decay_norms_and_biases: bool = True,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
) -> optax.GradientTransformation:
    """LAMB (You et al. 2020): Adam with a per-layer trust ratio, for large batches.

    Args:
      learning_rate: the schedule.
      weight_decay: the decoupled decay rate.
      decay_norms_and_biases: decay every parameter, or only kernels (`kernels_only`).
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.

    Returns:
      ``optax.lamb``.
    """
    return optax.lamb(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=_decay_mask(decay_norms_and_biases),
    )


register_optimizer("adam", adam)
register_optimizer("adamw", adamw)
register_optimizer("sgd", sgd)
register_optimizer("lamb", lamb)


def optimizer_names() -> tuple[str, ...]:
    """The registered optimiser names, sorted."""
    return OPTIMIZERS.names()


def bind_optimizer(optimizer_config: ml_collections.ConfigDict):
    """The optimiser function of ``config.optimizer.name``: ``f(learning_rate)``.

    Args:
      optimizer_config: ``config.optimizer`` (``name``; ``weight_decay`` as a default).

    Raises:
      ValueError: naming ``config.optimizer.name``: malformed, unknown name or argument.
    """
    spec = optimizer_config.name
    if not isinstance(spec, str):
        raise ValueError(f"{WHERE}={spec!r}: expected an optimiser name such as 'adam'.")
    try:
        call = parse_call(spec)
    except ValueError as error:
        raise ValueError(f"{WHERE}={spec!r}: {error}.") from None
    defaults = {"weight_decay": float(optimizer_config.get("weight_decay", 0.0))}
    return OPTIMIZERS.bind(call, WHERE, spec, defaults)


def create_learning_rate_schedule(
    optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The run's schedule: ``warmup_epochs`` of linear warmup, then ``config.optimizer.schedule``.

    Args:
      optimizer_config: ``config.optimizer``.
      steps_per_epoch: optimiser steps in one epoch.
      total_steps: optimiser steps of the whole run.

    Returns:
      An optax schedule (step -> learning rate), `bts_jax.train.schedules.create_schedule`.
    """
    warmup = int(round(optimizer_config.warmup_epochs * steps_per_epoch))
    return create_schedule(
        optimizer_config.schedule, float(optimizer_config.learning_rate), warmup, total_steps
    )


def create_optimizer(
    optimizer_config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The named optimiser on ``schedule``, after global-norm clipping if ``grad_clip_norm > 0``.

    Args:
      optimizer_config: ``config.optimizer``.
      schedule: learning-rate schedule.

    Returns:
      An optax gradient transformation.
    """
    optimizer = bind_optimizer(optimizer_config)(schedule)
    if optimizer_config.grad_clip_norm > 0:
        optimizer = optax.chain(
            optax.clip_by_global_norm(optimizer_config.grad_clip_norm), optimizer
        )
    return optimizer
