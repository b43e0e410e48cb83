"""A run's folder: the one package that knows every file of a workdir and reads and writes it.

`layout` names the files; `configs` keeps ``config.json`` and its guard; `lock` makes the folder
writable and single-writer; `checkpoints` saves and restores Orbax checkpoints; `split_file` and
`metrics_log` keep the split and the per-epoch metrics; `environment` records where a run ran;
`weights` says which weights of a save are evaluated (the moving average, when a run keeps one).
"""

from bts_jax.workdir.checkpoints import (
    CHECKPOINT_CHOICES,
    check_which,
    checkpoint_managers,
    latest_saved_step,
    load_trained_model,
    resolve_checkpoint,
    restore_checkpoint,
    restore_train_state,
    save_checkpoint,
    saved_steps,
)
from bts_jax.workdir.configs import (
    SAFE_CHANGES,
    ConfigChange,
    ConfigChangedError,
    check_config,
    diff_configs,
    load_config,
    read_config_history,
    read_saved_config,
    record_config,
    save_config,
)
from bts_jax.workdir.environment import (
    environment_record,
    read_environment,
    write_environment,
)
from bts_jax.workdir.layout import seed_workdir, seed_workdirs_in
from bts_jax.workdir.lock import (
    WorkdirLock,
    WorkdirLockedError,
    WorkdirNotWritableError,
    lock_holder,
    prepare_workdir,
)
from bts_jax.workdir.metrics_log import (
    MEASURED_FIELDS,
    MetricLogger,
    read_metrics,
    without_measured,
)
from bts_jax.workdir.split_file import read_split_file, recorded_split_ids, write_split_file
from bts_jax.workdir.weights import (
    EMA_WEIGHTS,
    RAW_WEIGHTS,
    describe_weights,
    ema_decay_of,
    ema_enabled,
    ema_start_step_of,
    evaluated_variables,
    weights_name,
)

__all__ = [
    "CHECKPOINT_CHOICES",
    "EMA_WEIGHTS",
    "RAW_WEIGHTS",
    "SAFE_CHANGES",
    "ConfigChange",
    "ConfigChangedError",
    "MEASURED_FIELDS",
    "MetricLogger",
    "WorkdirLock",
    "WorkdirLockedError",
    "WorkdirNotWritableError",
    "check_config",
    "check_which",
    "checkpoint_managers",
    "describe_weights",
    "diff_configs",
    "ema_decay_of",
    "ema_enabled",
    "ema_start_step_of",
    "environment_record",
    "evaluated_variables",
    "latest_saved_step",
    "load_config",
    "load_trained_model",
    "lock_holder",
    "prepare_workdir",
    "read_config_history",
    "read_environment",
    "read_metrics",
    "read_saved_config",
    "read_split_file",
    "record_config",
    "recorded_split_ids",
    "resolve_checkpoint",
    "restore_checkpoint",
    "restore_train_state",
    "save_checkpoint",
    "save_config",
    "saved_steps",
    "seed_workdir",
    "seed_workdirs_in",
    "weights_name",
    "without_measured",
    "write_environment",
    "write_split_file",
]
