"""The train state: everything a run needs to continue exactly where it stopped.

The state is replicated over the run's ``("data",)`` mesh (`bts_jax.sharding`); it is initialised
from ``config.seed`` (`create_train_state`), with the head's bias at the prior
``config.model.output_bias_prior`` when set (`output_bias_prior`), or restored into
`abstract_train_state`, which computes nothing. Seeds trained together (`bts_jax.train.seeds`)
stack their states along a leading seed axis: `create_seed_train_states`, `stack_train_states`,
`unstack_train_state`. A run that averages its weights (``config.ema_decay > 0``,
`bts_jax.train.ema`) has an `EmaTrainState`; `eval_variables` gives the weights any state is
evaluated with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bts_jax import data as data_lib
from bts_jax.models.head import AUTO, check_output_bias_prior, output_bias, with_output_bias
from bts_jax.sharding import SEED_AXIS
from bts_jax.workdir.weights import ema_enabled, evaluated_variables


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: number of optimiser updates done, int32 scalar.
      params: model parameters (float32).
      batch_stats: BatchNorm running statistics (float32); ``{}`` for a model without
        BatchNorm (``config.model.norm`` other than ``batch``).
      opt_state: optax state.
      rng: raw key data (uint32) of the run's base key; the step folds in the step number, so
        restoring it and the step restores every future random draw.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


@flax.struct.dataclass
class EmaTrainState(TrainState):
    """A `TrainState` that also carries the moving average of its weights (`bts_jax.train.ema`).

    A subclass rather than an optional field, so that a run without averaging has exactly the
    state, and writes exactly the checkpoints, of a run from before averaging existed.

    Attributes:
      ema: ``{"params": ..., "batch_stats": ...}``, the averages of ``params`` and
        ``batch_stats`` (the same trees, float32).
    """

    ema: Any


def eval_variables(state: TrainState) -> dict[str, Any]:
    """The variables ``state`` is evaluated with: its weights' average when it has one.

    Args:
      state: a `TrainState` or `EmaTrainState` (any leading axes).

    Returns:
      ``{"params": ..., "batch_stats": ...}``, chosen by `bts_jax.workdir.evaluated_variables`.
    """
    return evaluated_variables(
        {
            "params": state.params,
            "batch_stats": state.batch_stats,
            "ema": getattr(state, "ema", None),
        }
    )


def state_initializer(
    image_size: int,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    ema: bool = False,
):
    """The pure function ``rng -> TrainState`` at step 0 that every initialisation traces.

    Args:
      image_size: the input height and width the model is initialised at.
      model: the segmentation model.
      optimizer: the optax transformation whose state is initialised.
      ema: return an `EmaTrainState` whose average starts at the initial weights.

    Returns:
      ``init(rng, output_bias=None)``: splits ``rng`` into the model's initialisation key and the
      run's key; an ``output_bias`` of shape (num_classes,) replaces the head's initial bias.
    """

    def init(rng, output_bias=None):
        init_rng, run_rng = jax.random.split(rng)
        dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
        variables = model.init(init_rng, dummy, train=False)
        params = variables["params"]
        if output_bias is not None:  # None leaves the initialisation exactly as before the prior.
            params = with_output_bias(params, output_bias)
        fields = dict(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(run_rng),
        )
        if not ema:
            return TrainState(**fields)
        average = {"params": fields["params"], "batch_stats": fields["batch_stats"]}
        return EmaTrainState(**fields, ema=average)

    return init


def _initializer(config: ml_collections.ConfigDict, model, optimizer):
    return state_initializer(int(config.data.image_size), model, optimizer, ema=ema_enabled(config))


def output_bias_prior(
    config: ml_collections.ConfigDict, train_fraction: float | None = None
) -> float | None:
    """The tumour probability the head starts at (``config.model.output_bias_prior``).

    Args:
      config: experiment config.
      train_fraction: the training split's tumour pixel fraction
        (`bts_jax.data.tumour_pixel_fraction`), needed for ``"auto"`` only.

    Returns:
      None (the setting is unset: the zero bias), the set probability, or for ``"auto"``
      ``train_fraction``.

    Raises:
      ValueError: naming the setting, for an invalid value, ``"auto"`` without
        ``train_fraction``, or a training split whose fraction is 0 or 1.
    """
    where = "config.model.output_bias_prior"
    setting = check_output_bias_prior(config.model.get("output_bias_prior"), where)
    if setting != AUTO:
        return setting
    if train_fraction is None:
        raise ValueError(
            f"{where}='auto' needs the training split's tumour pixel fraction "
            "(bts_jax.data.tumour_pixel_fraction), passed as train_fraction."
        )
    return check_output_bias_prior(
        train_fraction, f"{where}='auto': the training split's tumour pixel fraction"
    )


def prior_fraction(config: ml_collections.ConfigDict, cache: Any = None) -> float | None:
    """What `create_train_state` needs as ``train_fraction`` for this config (None if nothing).

    The training split's tumour pixel fraction (`bts_jax.data.tumour_pixel_fraction`, training
    masks only) when ``config.model.output_bias_prior`` is ``"auto"``; None for any other
    setting. The train loop (`bts_jax.train.seeds.SeedRun.tumour_fraction`) and code building a
    state outside it (the benchmarks) both take it from here.

    Args:
      config: experiment config.
      cache: a `bts_jax.data.DataCache` to decode the split into (or None).
    """
    if config.model.get("output_bias_prior") != AUTO:
        return None
    return data_lib.tumour_pixel_fraction(config, "train", cache)


def output_bias_record(
    config: ml_collections.ConfigDict, num_classes: int, train_fraction: float | None = None
) -> dict[str, Any] | None:
    """What a run records of its head's prior (environment.json, the log); None when unset.

    Args:
      config: experiment config.
      num_classes: the model's output channels.
      train_fraction: as in `output_bias_prior`.

    Returns:
      ``{"setting": "auto" or p, "prior": p, "bias": [K floats]}`` or None.
    """
    prior = output_bias_prior(config, train_fraction)
    if prior is None:
        return None
    bias = output_bias(prior, num_classes)
    setting = config.model.output_bias_prior
    return {"setting": setting, "prior": prior, "bias": [float(b) for b in bias]}


def _initial_bias(config, model: nn.Module, train_fraction: float | None) -> np.ndarray | None:
    prior = output_bias_prior(config, train_fraction)
    return None if prior is None else output_bias(prior, int(model.num_classes))


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    train_fraction: float | None = None,
) -> TrainState:
    """Initialises the train state from ``config.seed``, replicated over ``mesh``.

    Args:
      config: experiment config (``seed``, ``data.image_size``, ``ema_decay``,
        ``model.output_bias_prior``).
      model: the segmentation model.
      optimizer: the optax transformation whose state is initialised.
      mesh: device mesh; the state is replicated on all its devices.
      train_fraction: the training split's tumour pixel fraction, for
        ``model.output_bias_prior="auto"``.

    Returns:
      A TrainState at step 0 (an `EmaTrainState` when ``config.ema_decay > 0``).
    """
    init = _initializer(config, model, optimizer)
    bias = _initial_bias(config, model, train_fraction)
    return jax.jit(lambda rng: init(rng, bias), out_shardings=NamedSharding(mesh, P()))(
        jax.random.key(config.seed)
    )


def abstract_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
    """The shapes, dtypes and (replicated) shardings of the train state, computing nothing.

    Restoring a checkpoint into this skips the initialisation's compilation.

    Args:
      config: experiment config.
      model: the segmentation model.
      optimizer: the optax transformation.
      mesh: device mesh.

    Returns:
      A TrainState of ``jax.ShapeDtypeStruct`` leaves.
    """
    init = _initializer(config, model, optimizer)
    shapes = jax.eval_shape(init, jax.random.key(config.seed))
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )


def create_seed_train_states(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    train_fractions: Sequence[float] | None = None,
) -> TrainState:
    """Initialises ``config.num_seeds`` states at once, seed k from ``config.seed + k``.

    Seed k's slice equals `create_train_state` of a config with ``seed = config.seed + k``
    exactly: the initialisation is the same function, vmapped over the seeds' keys.

    Args:
      config: experiment config (``seed``, ``num_seeds``, ``data.image_size``).
      model: the segmentation model.
      optimizer: the optax transformation whose state is initialised.
      mesh: a `make_seed_mesh` mesh; the seed axis of the state is sharded over its "seed" axis.
      train_fractions: each seed's training-split tumour pixel fraction (the seeds' splits may
        differ), for ``model.output_bias_prior="auto"``.

    Returns:
      A TrainState whose every leaf has a leading seed axis of size ``config.num_seeds``.
    """
    init = _initializer(config, model, optimizer)
    num_seeds = int(config.num_seeds)
    fractions = list(train_fractions) if train_fractions is not None else [None] * num_seeds
    biases = [_initial_bias(config, model, fraction) for fraction in fractions]
    # The raw key data of each seed's key, so the keys are exactly those of single runs.
    keys = np.stack(
        [
            np.asarray(jax.random.key_data(jax.random.key(int(config.seed) + k)))
            for k in range(num_seeds)
        ]
    )
    seeded = NamedSharding(mesh, P(SEED_AXIS))
    if biases[0] is None:
        return jax.jit(
            jax.vmap(lambda data: init(jax.random.wrap_key_data(data))), out_shardings=seeded
        )(keys)
    return jax.jit(
        jax.vmap(lambda data, bias: init(jax.random.wrap_key_data(data), bias)),
        out_shardings=seeded,
    )(keys, np.stack(biases))


def _seed_slice(state: TrainState, k: int) -> TrainState:
    return jax.tree_util.tree_map(lambda x: x[k], state)


def _unstack(state: TrainState) -> tuple[TrainState, ...]:
    num_seeds = jax.tree_util.tree_leaves(state)[0].shape[0]
    return tuple(_seed_slice(state, k) for k in range(num_seeds))


def stack_train_states(states: Sequence[TrainState], mesh: Mesh) -> TrainState:
    """Stacks single-seed states (e.g. restored ones) into one with a leading seed axis.

    The stacking happens on the host, so that it compiles nothing: as one jit over the state's
    leaves (~200 for the paper model with Adam) it took 5.6 s of compiling on a CPU, once per
    resumed K-seed run. Every process holds each replicated leaf whole, so this also holds on
    several hosts.

    Args:
      states: K states of the same structure, each replicated over ``mesh``'s devices (as
        restored on the eval mesh, or as `unstack_train_state` returns them).
      mesh: a `make_seed_mesh` mesh.

    Returns:
      The stacked TrainState, its seed axis sharded over the "seed" mesh axis.

    Raises:
      ValueError: a leaf is not replicated (no process could read it whole).
    """
    sharding = NamedSharding(mesh, P(SEED_AXIS))

    def stack_leaf(*leaves: jax.Array) -> jax.Array:
        for leaf in leaves:
            if not leaf.sharding.is_fully_replicated:
                raise ValueError(
                    f"stack_train_states takes replicated states; a leaf of shape {leaf.shape} "
                    f"is sharded as {leaf.sharding}."
                )
        stacked = np.stack([np.asarray(leaf.addressable_data(0)) for leaf in leaves])
        return jax.make_array_from_callback(stacked.shape, sharding, lambda index: stacked[index])

    return jax.tree_util.tree_map(stack_leaf, *states)


def unstack_train_state(state: TrainState, mesh: Mesh) -> list[TrainState]:
    """Splits a stacked state into its seeds' states, each replicated like a single run's.

    Args:
      state: a TrainState with a leading seed axis (from `create_seed_train_states` or a step).
      mesh: the 1-D mesh of the same devices (`flat_mesh`).

    Returns:
      K TrainStates, seed order, replicated over ``mesh``.
    """
    return list(jax.jit(_unstack, out_shardings=NamedSharding(mesh, P()))(state))
