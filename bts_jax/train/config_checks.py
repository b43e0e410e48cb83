"""Checks an experiment config once, at set-up, before anything is compiled or read.

Every error names the config field to change. The checks need the run's device and process
counts, which only the caller (the trainer, holding the mesh) knows; the data layer and the models
are then handed values that are known to fit.
"""

from __future__ import annotations

from typing import Any

from bts_jax import data as data_lib
from bts_jax.models import build_model, resolve_conv_impl
from bts_jax.models.head import check_output_bias_prior
from bts_jax.sharding import seed_axis_size
from bts_jax.train.loss_builder import check_loss_config
from bts_jax.train.optim import bind_optimizer
from bts_jax.train.schedules import bind_schedule


def _check_seeds(config: Any, device_count: int, process_count: int) -> None:
    num_seeds = config.get("num_seeds", 1)
    if not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"config.num_seeds={num_seeds!r} must be an integer >= 1.")
    if num_seeds == 1:
        return
    if process_count > 1:
        raise ValueError(
            f"config.num_seeds={num_seeds} trains on one host only ({process_count} processes "
            "here): set config.num_seeds=1 and run the seeds one after another (or as a sweep)."
        )
    seeds = seed_axis_size(num_seeds, device_count)
    data_devices = device_count // seeds
    batch = int(config.batch_size)
    if batch < 1 or batch % data_devices:
        raise ValueError(
            f"config.batch_size={batch} (each seed's batch) must be a positive multiple of the "
            f"{data_devices} data-parallel devices of each seed: with config.num_seeds={num_seeds} "
            f"on {device_count} devices the seed axis has {seeds} (the largest divisor of "
            f"num_seeds that divides the device count) and the data axis {data_devices}. Change "
            "config.batch_size or config.num_seeds."
        )
    if 0 < int(config.checkpoint.max_to_keep) < 2:  # 0 keeps every save
        raise ValueError(
            f"config.checkpoint.max_to_keep={config.checkpoint.max_to_keep} must be >= 2 with "
            f"config.num_seeds={num_seeds}: a run killed between its seeds' saves of one step "
            "resumes every seed from the save before it."
        )


def _check_batches(config: Any, device_count: int, process_count: int) -> None:
    for split, field in (("train", "batch_size"), ("validation", "eval_batch_size")):
        value = int(config[field])
        if split == "train" and config.get("num_seeds", 1) > 1:
            # Checked against the seed mesh's data axis by _check_seeds.
            data_lib.local_batch_size(config, split, process_count)
            continue
        if value < 1 or value % device_count:
            raise ValueError(
                f"config.{field}={value} must be a positive multiple of the number of devices: "
                f"the device count ({device_count}) over all hosts, so that each device gets an "
                "equal share of the global batch."
            )
        data_lib.local_batch_size(config, split, process_count)


def _check_image_size(config: Any) -> None:
    size = int(config.data.image_size)
    stages = len(config.model.features)
    factor = 2**stages
    if size <= 0 or size % factor:
        raise ValueError(
            f"config.data.image_size={size} must be a multiple of {factor} (the U-Net pools "
            f"{stages} times); set config.data.image_size to a multiple of {factor} such as "
            f"{max(factor, round(size / factor) * factor)} instead of {size}."
        )


def _check_optimizer(optimizer: Any) -> None:
    # The registries hold the names (bts_jax.train.registry); binding checks names and arguments.
    bind_optimizer(optimizer)
    bind_schedule(optimizer.schedule)
    if optimizer.learning_rate <= 0:
        raise ValueError(f"config.optimizer.learning_rate={optimizer.learning_rate} <= 0.")
    for field in ("warmup_epochs", "grad_clip_norm", "weight_decay"):
        if optimizer[field] < 0:
            raise ValueError(f"config.optimizer.{field}={optimizer[field]} must be >= 0.")


def _check_ema(config: Any) -> None:
    decay = config.get("ema_decay", 0.0)
    # bool is an int: ema_decay=True would otherwise pass as 1.
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
        raise ValueError(
            f"config.ema_decay={decay!r} must be a number in [0, 1): 0 turns weight averaging "
            "off, e.g. 0.999 averages over about 1000 steps."
        )
    start = config.get("ema_start_step", 0)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(
            f"config.ema_start_step={start!r} must be an integer >= 0 (the optimiser step "
            "until which the average equals the weights)."
        )


def _check_conv_impl(model: Any, device_count: int) -> None:
    """``config.model.conv_impl``: a known name; an explicit ``onednn`` on one device, built."""
    impl = model.get("conv_impl", "xla")
    # This run's devices, which need not be all of the backend's that resolve_conv_impl counts.
    if impl == "onednn" and device_count != 1:
        raise ValueError(
            f"config.model.conv_impl='onednn' needs one device, and this run has {device_count}: "
            "oneDNN's custom call is not partitioned over a mesh. Use 'auto' (XLA's convolutions "
            "on several devices) or 'xla'."
        )
    try:
        # Refuses an unknown name; builds and loads the extension now, not inside the first step.
        resolve_conv_impl(impl)
    except RuntimeError as error:
        raise ValueError(str(error)) from None


def validate_config(config: Any, *, device_count: int, process_count: int) -> None:
    """Raises a ValueError naming the field when ``config`` cannot run on these devices.

    Checks: the training augmentation (``config.data.augmentations``, or the old switches of
    ``config.data.augment``: op names, arguments, each op run once on a tiny pair; see
    `bts_jax.data.check_augmentations`), the model section (names, placements, widths, dtype,
    the norm against every layer's width, the head's ``output_bias_prior``, ``conv_impl``: an
    explicit ``onednn`` needs one device and the extension built), the image size
    against the number of U-Net stages, ``num_seeds`` (one host; each seed's batch against the
    data axis of the seed mesh, see `bts_jax.sharding.make_seed_mesh`), both batch sizes against
    the device and process counts, the number of epochs, the optimiser and schedule (names and
    arguments), the loss (`bts_jax.train.loss_builder.check_loss_config`: names, arguments, one
    abstract call) and the weight averaging (``ema_decay`` in [0, 1), ``ema_start_step`` >= 0).

    Args:
      config: an experiment config (``configs/default.py``'s fields).
      device_count: devices over all hosts (``jax.device_count()`` or the mesh's size).
      process_count: hosts (``jax.process_count()``).
    """
    _check_ema(config)
    data_lib.check_augmentations(config.data)
    _check_conv_impl(config.model, device_count)  # before build_model, which runs the blocks
    build_model(config.model, dtype=config.dtype)
    check_output_bias_prior(config.model.get("output_bias_prior"))
    _check_image_size(config)
    _check_seeds(config, device_count, process_count)
    _check_batches(config, device_count, process_count)
    if config.num_epochs < 1:
        raise ValueError(f"config.num_epochs={config.num_epochs} must be >= 1.")
    _check_optimizer(config.optimizer)
    check_loss_config(config.loss, int(config.model.num_classes))
    for field in ("log_every_steps", "eval_every_epochs"):
        if int(config[field]) < 1:
            raise ValueError(f"config.{field}={config[field]} must be >= 1.")
    if int(config.checkpoint.every_steps) < 0:
        raise ValueError(
            f"config.checkpoint.every_steps={config.checkpoint.every_steps} must be >= 0 "
            "(0 = at the end of every epoch)."
        )
