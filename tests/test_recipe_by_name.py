"""Every registered recipe part trains: each loss, optimiser, schedule, norm and augmentation op.

Each name of each registry goes into at least one row; a row is one ``train.py`` command line
(parsed by ``train.py``'s own flag parser, `test_models_extending.parse_train_command`) that sets
one name of every kind at once, so the six rows train every name of every kind for one epoch of
``configs/test.py`` at `helpers.SMALL_MODEL`'s size, on one device. Weight averaging and the
head's prior alternate between the rows.
"""

import json

import jax
import numpy as np
import pytest
from helpers import SMALL_MODEL, read_text
from test_models_extending import parse_train_command

from bts_jax import data as data_lib
from bts_jax import models, sharding
from bts_jax import train as train_lib
from bts_jax.train import registry
from bts_jax.train.config_checks import validate_config

KINDS = {
    "config.loss.name": registry.LOSSES.names(),
    "config.optimizer.name": registry.OPTIMIZERS.names(),
    "config.optimizer.schedule": registry.SCHEDULES.names(),
    "config.model.norm": models.norm_names(),
}
NUM_ROWS = max(len(names) for names in KINDS.values())


def row_command(k: int, workdir: str) -> list[str]:
    """Row ``k``'s command: the k-th name of each kind (cycling), all ops on the first row."""
    command = ["python", "train.py", "--config", "configs/test.py", "--workdir", workdir]
    command += [f"--{flag}={names[k % len(names)]}" for flag, names in KINDS.items()]
    command += [f"--config.{field}={value}" for field, value in SMALL_MODEL.items()]
    ops = "|".join(data_lib.op_names()) if k == 0 else "flip"
    command += [f"--config.data.augmentations={ops}", "--config.optimizer.warmup_epochs=0.5"]
    command += ["--config.num_predictions=0"]  # no figures: the parts are under test
    # Averaging and the head's prior on every other row: each part with and without the other.
    if k % 2:
        command += ["--config.ema_decay=0.5", "--config.model.output_bias_prior=auto"]
    return command


def test_the_rows_name_every_registered_part_of_every_kind():
    used = {flag: set() for flag in KINDS}
    for k in range(NUM_ROWS):
        config = parse_train_command(row_command(k, "unused"))
        used["config.loss.name"].add(config.loss.name)
        used["config.optimizer.name"].add(config.optimizer.name)
        used["config.optimizer.schedule"].add(config.optimizer.schedule)
        used["config.model.norm"].add(config.model.norm)
        if k == 0:
            assert config.data.augmentations.split("|") == list(data_lib.op_names())
    assert {flag: sorted(names) for flag, names in used.items()} == {
        flag: sorted(names) for flag, names in KINDS.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("k", range(NUM_ROWS))
def test_every_registered_part_trains_one_epoch_from_the_command_line(k, tmp_path):
    workdir = str(tmp_path / f"row_{k}")
    config = parse_train_command(row_command(k, workdir))
    validate_config(config, device_count=1, process_count=1)
    (trained,) = train_lib.train_and_evaluate(
        config, workdir, mesh=sharding.make_mesh(jax.devices()[:1]), show_progress=False
    )
    rows = [json.loads(line) for line in read_text(workdir, "metrics.jsonl").splitlines()]
    assert len(rows) == 1
    assert np.isfinite(rows[0]["train_loss"]) and np.isfinite(rows[0]["val_loss"])
    assert np.isfinite(trained.metrics["miou"])
    saved = json.loads(read_text(workdir, "config.json"))
    assert saved["loss"]["name"] == config.loss.name
    assert saved["model"]["norm"] == config.model.norm
