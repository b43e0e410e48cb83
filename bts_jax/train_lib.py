"""Training and evaluation: one jitted, data-parallel step from a laptop CPU to many GPUs and hosts.

The step is a pure function compiled once with ``jax.jit`` over a 1-D ``("data",)`` mesh of all
devices (of all processes): the batch is sharded along its leading axis, the train state is
replicated, and XLA inserts the collectives, so BatchNorm statistics, losses and gradients are
those of the global batch. The same code runs on one CPU and on many GPUs over many hosts.
"""

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bts_jax import data as data_lib
from bts_jax import inference, losses, metrics, plots
from bts_jax.models import build_model, count_params

# Keys of a batch that live on devices; the rest ("id") stays on the host.
DEVICE_KEYS = ("image", "mask", "valid")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: number of optimiser updates done, int32 scalar.
      params: model parameters (float32).
      batch_stats: BatchNorm running statistics (float32).
      opt_state: optax state.
      rng: raw key data (uint32) of the run's base key; the step folds in the step number, so
        restoring it and the step restores every future random draw.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


# ----------------------------------------------------------------------------- set-up


def make_mesh(devices: Iterable[jax.Device] | None = None) -> Mesh:
    """Returns a 1-D mesh with axis "data" over ``devices``.

    Args:
      devices: the devices to use; default all devices of all processes.

    Returns:
      A ``Mesh`` of shape (num_devices,) with axis name "data".
    """
    devices = np.asarray(list(devices) if devices is not None else jax.devices())
    return Mesh(devices, ("data",))


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Raises a ValueError naming the setting when ``config`` cannot run on ``mesh``.

    Args:
      config: experiment config.
      mesh: the device mesh the run will use.
    """
    num_devices = mesh.devices.size
    for field in ("batch_size", "eval_batch_size"):
        value = int(config[field])
        if value < 1 or value % num_devices:
            raise ValueError(
                f"config.{field}={value} must be a positive multiple of the number of devices "
                f"({num_devices}); each device gets an equal share of the global batch."
            )
    if config.num_epochs < 1:
        raise ValueError(f"config.num_epochs={config.num_epochs} must be >= 1.")
    if config.optimizer.learning_rate <= 0:
        raise ValueError(f"config.optimizer.learning_rate={config.optimizer.learning_rate} <= 0.")
    factor = 2 ** len(config.model.features)
    if config.data.image_size % factor:
        raise ValueError(
            f"config.data.image_size={config.data.image_size} must be a multiple of {factor} "
            f"(2 ** {len(config.model.features)} U-Net stages)."
        )


def create_learning_rate_schedule(
    optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Builds the learning-rate schedule: optional linear warmup, then constant or cosine decay.

    Args:
      optimizer_config: ``config.optimizer``.
      steps_per_epoch: optimiser steps in one epoch.
      total_steps: optimiser steps of the whole run.

    Returns:
      An optax schedule (step -> learning rate).
    """
    base = float(optimizer_config.learning_rate)
    warmup = int(round(optimizer_config.warmup_epochs * steps_per_epoch))
    name = optimizer_config.schedule
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, base, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if name != "constant":
        raise ValueError(f"config.optimizer.schedule={name!r}; expected 'constant' or 'cosine'.")
    if not warmup:
        return optax.constant_schedule(base)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, base, warmup), optax.constant_schedule(base)], [warmup]
    )


def create_optimizer(
    optimizer_config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Builds Adam or AdamW (the paper's Adam at lr 1e-4 by default), with optional clipping.

    Args:
      optimizer_config: ``config.optimizer``.
      schedule: learning-rate schedule.

    Returns:
      An optax gradient transformation.
    """
    name = optimizer_config.name
    if name == "adam":
        optimizer = optax.adam(schedule)
    elif name == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=optimizer_config.weight_decay)
    else:
        raise ValueError(f"config.optimizer.name={name!r}; expected 'adam' or 'adamw'.")
    if optimizer_config.grad_clip_norm > 0:
        optimizer = optax.chain(
            optax.clip_by_global_norm(optimizer_config.grad_clip_norm), optimizer
        )
    return optimizer


def _init_fn(config, model: nn.Module, optimizer: optax.GradientTransformation):
    """Returns a pure function rng -> TrainState at step 0."""
    size = config.data.image_size

    def init(rng):
        init_rng, run_rng = jax.random.split(rng)
        variables = model.init(init_rng, jnp.zeros((1, size, size, 1), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(run_rng),
        )

    return init


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
    """Initialises the train state from ``config.seed``, replicated over ``mesh``.

    Args:
      config: experiment config (``seed``, ``data.image_size``).
      model: the segmentation model.
      optimizer: the optax transformation whose state is initialised.
      mesh: device mesh; the state is replicated on all its devices.

    Returns:
      A TrainState at step 0.
    """
    init = _init_fn(config, model, optimizer)
    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(jax.random.key(config.seed))


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
    shapes = jax.eval_shape(_init_fn(config, model, optimizer), jax.random.key(config.seed))
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global, data-sharded batch from this host's local batch.

    Args:
      local_batch: this host's numpy batch (the keys in ``DEVICE_KEYS`` are used), leading axis
        ``global batch / process count``.
      mesh: the device mesh.

    Returns:
      Global ``jax.Array`` s sharded along the leading axis over the "data" mesh axis.
    """
    sharding = NamedSharding(mesh, P("data"))
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
        for key in DEVICE_KEYS
    }


# ----------------------------------------------------------------------------- steps


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    bce_weight: float,
    dice_weight: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a global batch. Pure; jit it with ``make_train_step``.

    Args:
      state: the train state.
      batch: ``image`` float32 (B, S, S, 1), ``mask`` int32 (B, S, S), ``valid`` bool (B,).
      model: the segmentation model.
      optimizer: the optax transformation of ``state.opt_state``.
      bce_weight: weight of the cross-entropy term.
      dice_weight: weight of the soft Dice term.

    Returns:
      The new state and float32 scalar metrics ``loss``, ``cross_entropy``, ``dice_loss``,
      ``grad_norm``, ``learning_rate``-free (schedules are logged by the host).
    """
    # Reserved for stochastic layers (dropout): one fresh key per step, restored with the step.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": step_rng},
        )
        loss, parts = losses.segmentation_loss(
            logits,
            batch["mask"],
            batch["valid"],
            bce_weight=bce_weight,
            dice_weight=dice_weight,
        )
        return loss, (updates["batch_stats"], parts)

    (loss, (batch_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    step_metrics = {
        "loss": loss,
        "cross_entropy": parts["cross_entropy"],
        "dice_loss": parts["dice_loss"],
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, step_metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    bce_weight: float,
    dice_weight: float,
) -> dict[str, jax.Array]:
    """Evaluates a global batch with the running BatchNorm statistics. Pure.

    Args:
      state: the train state.
      batch: as in :func:`train_step`; entries with ``valid=False`` count for nothing.
      model: the segmentation model.
      bce_weight: weight of the cross-entropy term.
      dice_weight: weight of the soft Dice term.

    Returns:
      ``loss_sum`` (the batch loss times its number of valid images), ``num_valid``,
      ``confusion`` int32 (K, K) and ``predictions`` uint8 (B, S, S) class ids.
    """
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    loss, _ = losses.segmentation_loss(
        logits, batch["mask"], batch["valid"], bce_weight=bce_weight, dice_weight=dice_weight
    )
    predictions = metrics.predictions_from_logits(logits)
    num_valid = jnp.sum(batch["valid"]).astype(jnp.float32)
    return {
        "loss_sum": loss * num_valid,
        "num_valid": num_valid,
        "confusion": metrics.confusion_matrix(
            predictions, batch["mask"], model.num_classes, batch["valid"]
        ),
        "predictions": predictions.astype(jnp.uint8),
    }


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module, optimizer, mesh: Mesh):
    """Compiles :func:`train_step` for ``mesh``: batch sharded, state replicated and donated.

    Args:
      config: experiment config (``loss`` weights).
      model: the segmentation model.
      optimizer: the optax transformation.
      mesh: device mesh.

    Returns:
      A jitted function ``(state, global_batch) -> (state, metrics)``.
    """
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    step = functools.partial(
        train_step,
        model=model,
        optimizer=optimizer,
        bce_weight=config.loss.bce_weight,
        dice_weight=config.loss.dice_weight,
    )
    return jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_eval_step(config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh):
    """Compiles :func:`eval_step` for ``mesh``; predictions stay sharded like the batch.

    Args:
      config: experiment config (``loss`` weights).
      model: the segmentation model.
      mesh: device mesh.

    Returns:
      A jitted function ``(state, global_batch) -> outputs`` (see :func:`eval_step`).
    """
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    step = functools.partial(
        eval_step,
        model=model,
        bce_weight=config.loss.bce_weight,
        dice_weight=config.loss.dice_weight,
    )
    out_shardings = {
        "loss_sum": replicated,
        "num_valid": replicated,
        "confusion": replicated,
        "predictions": data,
    }
    return jax.jit(step, in_shardings=(replicated, data), out_shardings=out_shardings)


# ----------------------------------------------------------------------------- evaluation


def _to_host(array: jax.Array) -> np.ndarray:
    """Fetches a (possibly multi-host sharded) global array to every host as numpy."""
    if jax.process_count() == 1:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def evaluate(
    eval_fn: Callable,
    state: TrainState,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: Mesh,
    *,
    num_classes: int,
    per_image: bool = True,
) -> dict[str, float]:
    """Evaluates ``state`` over a whole split: metrics from sums, never averages of ratios.

    Args:
      eval_fn: a compiled :func:`eval_step`.
      state: the train state to evaluate.
      batches: host-local eval batches (padded entries have ``valid=False``).
      mesh: the device mesh.
      num_classes: the model's output channels.
      per_image: also compute per-image Dice, HD95 and boundary IoU on the host (slower).

    Returns:
      ``loss`` (mean over images) and the metrics of ``metrics.SegmentationEvaluator`` (or only
      the confusion-matrix ones when ``per_image`` is False).
    """
    evaluator = metrics.SegmentationEvaluator(num_classes)
    confusion = None
    loss_sum = num_valid = 0.0
    for local_batch in batches:
        batch = make_global_batch(local_batch, mesh)
        out = eval_fn(state, batch)
        loss_sum += float(out["loss_sum"])
        num_valid += float(out["num_valid"])
        cm = np.asarray(out["confusion"], np.int64)
        confusion = cm if confusion is None else confusion + cm
        if per_image:
            evaluator.update(
                cm,
                _to_host(out["predictions"]),
                _to_host(batch["mask"]),
                _to_host(batch["valid"]),
            )
    if confusion is None:
        raise ValueError("The evaluation split produced no batches.")
    result = evaluator.result() if per_image else metrics.metrics_from_confusion(confusion)
    result = {key: float(value) for key, value in result.items()}
    result["loss"] = loss_sum / max(num_valid, 1.0)
    result["num_images"] = num_valid
    return result


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_managers(workdir: str, config: ml_collections.ConfigDict):
    """Returns the two Orbax managers of a workdir: the latest N steps, and the best by mIoU.

    ``workdir/checkpoints`` keeps the last ``config.checkpoint.max_to_keep`` saves;
    ``workdir/best`` keeps the one save with the highest validation mIoU.

    Args:
      workdir: the run's directory.
      config: experiment config (``checkpoint.max_to_keep``).

    Returns:
      ``(latest, best)`` Orbax CheckpointManagers; close them when done.
    """
    latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.max_to_keep, create=True
        ),
    )
    best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["val_miou"], best_mode="max", create=True
        ),
    )
    return latest, best


def _save(manager, step: int, state: TrainState, meta: dict, step_metrics=None) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=step_metrics,
    )


def restore_checkpoint(manager, target: TrainState, step: int | None = None):
    """Restores (state, meta) from ``manager`` at ``step`` (default: latest) in ``target``'s layout.

    Args:
      manager: an Orbax CheckpointManager.
      target: a TrainState of arrays or ``jax.ShapeDtypeStruct`` s (see
        :func:`abstract_train_state`) whose shapes, dtypes and shardings the restored arrays take.
      step: the step to restore; None for the latest.

    Returns:
      ``(state, meta)`` or ``(None, None)`` if the manager holds no checkpoint.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


# ----------------------------------------------------------------------------- logging


class MetricLogger:
    """Writes per-epoch metrics to JSON lines, CSV and TensorBoard; silent on processes != 0.

    Attributes:
      workdir: the run's directory.
      history: the per-epoch rows written so far (restored on resume).
    """

    def __init__(self, workdir: str, history: list[dict] | None = None):
        self.workdir = workdir
        self.history = list(history or [])
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            import tensorflow as tf  # Only for the TensorBoard event writer.

            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, row: dict[str, float]) -> None:
        """Appends one epoch's metrics and rewrites the log files from the whole history.

        Args:
          row: metric name -> value; must contain "epoch" and "step".
        """
        self.history.append(dict(row))
        if not self.enabled:
            return
        # Rewritten whole from the history, so a resumed run never duplicates an epoch's row.
        with open(os.path.join(self.workdir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)
        self._write_csv()
        import tensorflow as tf

        with self._tb.as_default(step=int(row["step"])):
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, int | float):
                    tf.summary.scalar(key, value)
        self._tb.flush()

    def _write_csv(self) -> None:
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "epoch", k))
        lines = [",".join(keys)]
        lines += [",".join(str(row.get(k, "")) for k in keys) for row in self.history]
        with open(os.path.join(self.workdir, "metrics.csv"), "w") as f:
            f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- the loop


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the run stopped before saving anything after it."""


def _check_finite(pending: list[tuple[int, dict]], checkpoint_step: int | None) -> list[dict]:
    """Fetches pending step metrics and stops the run at the first non-finite loss."""
    fetched = jax.device_get(pending)
    for step, step_metrics in fetched:
        if not np.isfinite(step_metrics["loss"]):
            last = "none" if checkpoint_step is None else f"step {checkpoint_step}"
            raise NonFiniteLossError(
                f"Training loss is {step_metrics['loss']} at step {step}. The run stopped; the "
                f"last good checkpoint ({last}) is intact. Lower config.optimizer.learning_rate, "
                "set config.optimizer.grad_clip_norm, or check the input data."
            )
    return [m for _, m in fetched]


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


@dataclasses.dataclass
class RunSetup:
    """What a run derives from its config: the model, optimiser, mesh and compiled steps."""

    model: nn.Module
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    steps_per_epoch: int
    total_steps: int
    train_fn: Callable
    eval_fn: Callable


def setup_run(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> RunSetup:
    """Validates ``config`` and builds everything a run needs (no data is read beyond counting).

    Args:
      config: experiment config.
      mesh: device mesh; default all devices.

    Returns:
      A RunSetup.
    """
    mesh = mesh or make_mesh()
    check_config(config, mesh)
    model = build_model(config.model, dtype=config.dtype)
    steps = data_lib.steps_per_epoch(config)
    total = steps * config.num_epochs
    schedule = create_learning_rate_schedule(config.optimizer, steps, total)
    optimizer = create_optimizer(config.optimizer, schedule)
    return RunSetup(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        mesh=mesh,
        steps_per_epoch=steps,
        total_steps=total,
        train_fn=make_train_step(config, model, optimizer, mesh),
        eval_fn=make_eval_step(config, model, mesh),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None
) -> dict[str, float]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint, then evaluates.

    Writes to ``workdir``: ``config.json``, ``data_split.json``, ``checkpoints/`` (latest N) and
    ``best/`` (best validation mIoU), ``metrics.jsonl``, ``metrics.csv``, ``tensorboard/``,
    ``loss.png`` and ``miou.png``, ``eval_validation.json`` (full metrics of the best
    checkpoint) and ``predictions/`` (contours of truth and prediction on validation images).
    Only process 0 writes logs; every process takes part in checkpointing.

    Args:
      config: experiment config.
      workdir: output directory (created if needed).
      mesh: device mesh; default all devices of all processes.

    Returns:
      The full validation metrics of the best checkpoint.

    Raises:
      NonFiniteLossError: when the loss becomes NaN or Inf.
      ValueError: for an invalid config, naming the setting.
    """
    run = setup_run(config, mesh)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        _save_config(config, workdir)
        data_lib.write_split_file(config, workdir)

    abstract = abstract_train_state(config, run.model, run.optimizer, run.mesh)
    if is_main:
        logging.info(
            "Model: %s parameters; %d devices over %d processes; %d steps per epoch.",
            f"{count_params(abstract.params):,}",
            run.mesh.devices.size,
            jax.process_count(),
            run.steps_per_epoch,
        )
    latest, best = checkpoint_managers(workdir, config)
    state, meta = restore_checkpoint(latest, abstract)
    if state is None:
        state = create_train_state(config, run.model, run.optimizer, run.mesh)
    else:
        logging.info("Resumed from step %d of %s.", int(state.step), workdir)
    meta = meta or {"history": [], "best_miou": None}
    logger = MetricLogger(workdir, meta["history"])
    best_miou = -math.inf if meta["best_miou"] is None else meta["best_miou"]

    def save(manager, step, step_metrics=None):
        best_value = None if best_miou == -math.inf else best_miou
        _save(
            manager, step, state, {"history": logger.history, "best_miou": best_value}, step_metrics
        )

    step = int(state.step)
    checkpoint_step = latest.latest_step()
    every = int(config.checkpoint.every_steps)
    try:
        while step < run.total_steps:
            epoch, skip = divmod(step, run.steps_per_epoch)
            batches = data_lib.make_dataset(config, "train", epoch=epoch, skip_batches=skip)
            pending: list[tuple[int, dict]] = []
            epoch_metrics: list[dict] = []
            start = time.perf_counter()
            bar = _progress(batches, run.steps_per_epoch - skip, f"epoch {epoch + 1}", is_main)
            for local in bar:
                state, step_metrics = run.train_fn(state, make_global_batch(local, run.mesh))
                step += 1
                pending.append((step, step_metrics))
                if step % config.log_every_steps == 0 or step % run.steps_per_epoch == 0:
                    epoch_metrics += _check_finite(pending, checkpoint_step)
                    pending = []
                    if is_main and hasattr(bar, "set_postfix"):
                        rate = (
                            len(epoch_metrics) * config.batch_size / (time.perf_counter() - start)
                        )
                        bar.set_postfix(
                            loss=f"{epoch_metrics[-1]['loss']:.4f}", img_s=f"{rate:.1f}"
                        )
                if every and step % every == 0 and step % run.steps_per_epoch:
                    epoch_metrics += _check_finite(pending, checkpoint_step)
                    pending = []
                    save(latest, step)
                    checkpoint_step = step
            epoch_metrics += _check_finite(pending, checkpoint_step)
            if step % run.steps_per_epoch:
                raise RuntimeError(
                    f"The training input of epoch {epoch + 1} ended after step {step}, before "
                    f"its {run.steps_per_epoch} steps: did the dataset change during the run?"
                )
            elapsed = time.perf_counter() - start
            epoch = step // run.steps_per_epoch
            row = {
                "epoch": epoch,
                "step": step,
                # After a mid-epoch resume, the mean of the steps run since the resume.
                "train_loss": float(np.mean([m["loss"] for m in epoch_metrics])),
                "learning_rate": float(run.schedule(step)),
                "train_images_per_s": len(epoch_metrics) * config.batch_size / elapsed,
            }
            if epoch % config.eval_every_epochs == 0 or step == run.total_steps:
                val = evaluate(
                    run.eval_fn,
                    state,
                    data_lib.make_dataset(config, "validation"),
                    run.mesh,
                    num_classes=run.model.num_classes,
                    per_image=False,
                )
                row.update(val_loss=val["loss"], val_miou=val["miou"], val_dice=val["dice"])
            logger.write(row)
            if is_main:
                logging.info(
                    "epoch %d: %s",
                    epoch,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
                )
            improved = "val_miou" in row and row["val_miou"] > best_miou
            if improved:
                best_miou = row["val_miou"]
            if every == 0 or step % every == 0 or step == run.total_steps:
                save(latest, step)
                checkpoint_step = step
            if improved:
                save(best, step, {"val_miou": best_miou})
    finally:
        latest.wait_until_finished()
        best.wait_until_finished()

    if is_main:
        plots.plot_training_curves(logger.history, workdir)
    final = evaluate_checkpoint(config, workdir, "validation", run=run, which="best")
    if is_main:
        inference.save_split_predictions(workdir, num_images=config.num_predictions)
    latest.close()
    best.close()
    return final


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "validation",
    *,
    which: str = "best",
    run: RunSetup | None = None,
) -> dict[str, float]:
    """Evaluates a workdir's best (or latest) checkpoint on a split with every SPEC 4 metric.

    Prints nothing; writes ``workdir/eval_<split>.json`` on process 0.

    Args:
      config: the run's config.
      workdir: the run's directory.
      split: the split to evaluate ("validation" or "train").
      which: "best" or "latest".
      run: an existing RunSetup to reuse compiled steps; built from ``config`` when None.

    Returns:
      The metrics dict.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r}; expected 'best' or 'latest'.")
    run = run or setup_run(config)
    abstract = abstract_train_state(config, run.model, run.optimizer, run.mesh)
    latest, best = checkpoint_managers(workdir, config)
    manager = best if which == "best" and best.latest_step() is not None else latest
    restored, _ = restore_checkpoint(manager, abstract)
    if restored is None:
        raise FileNotFoundError(f"No checkpoint in {workdir!r}: train it first.")
    result = evaluate(
        run.eval_fn,
        restored,
        data_lib.make_dataset(config, split),
        run.mesh,
        num_classes=run.model.num_classes,
    )
    result["step"] = int(restored.step)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    latest.close()
    best.close()
    return result
