"""docs/extending.md's recipe part runs: a user's loss, schedule and optimiser, as written there.

As for the blocks part (tests/test_models_extending.py): Python blocks run in order in one
namespace, in a temporary folder on the Python path (``# file: PATH`` blocks are written there);
each ``train.py`` command is parsed by ``train.py``'s own flag parser and its config checked
(`validate_config`: every name, argument and the loss's contract); the last command, the user's
loss and schedule by import path, trains one epoch at tiny sizes on one device.
"""

import json
import sys

import jax
import numpy as np
import pytest
from helpers import read_text
from test_models_extending import DOC, code_blocks, commands, parse_train_command

from bts_jax import sharding
from bts_jax import train as train_lib
from bts_jax.naming import calls
from bts_jax.train import registry
from bts_jax.train.config_checks import validate_config


@pytest.fixture
def doc_folder(tmp_path, monkeypatch):
    saved = {
        kind: dict(table._functions)
        for kind, table in (
            ("loss", registry.LOSSES),
            ("optimizer", registry.OPTIMIZERS),
            ("schedule", registry.SCHEDULES),
        )
    }
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for table in (registry.LOSSES, registry.OPTIMIZERS, registry.SCHEDULES):
        for name in set(table.names()) - set(saved[table.kind]):
            table.unregister(name)
    calls.import_path.cache_clear()
    for module in ("my_losses", "my_schedules"):
        sys.modules.pop(module, None)


def _tiny(config):
    """The command's config at the sizes of configs/test.py, for one epoch on one device."""
    config.model.features = (4, 8)
    config.data.source = "sample"
    config.data.image_size = 32
    config.data.val_fraction = 0.2
    config.batch_size = config.eval_batch_size = 8
    config.num_epochs, config.num_predictions = 1, 1
    return config


@pytest.mark.slow
def test_extending_md_recipe_part_runs(doc_folder):
    blocks = code_blocks(DOC, part=1)
    assert [lang for lang, _ in blocks].count("python") == 4
    namespace, configs = {"__name__": "extending_md"}, []
    for lang, code in blocks:
        if lang == "python" and code.startswith("# file: "):
            path, _, body = code.partition("\n")
            (doc_folder / path.removeprefix("# file: ")).write_text(body)
        elif lang == "python":
            exec(compile(code, DOC, "exec"), namespace)
        else:
            for argv in commands(code):
                config = parse_train_command(argv)
                validate_config(config, device_count=1, process_count=1)
                configs.append(config)
    assert len(configs) == 4
    assert configs[-1].loss.name.startswith("my_losses:") and configs[-1].optimizer.schedule
    workdir = str(doc_folder / "workdirs" / "my_recipe")
    mesh = sharding.make_mesh(jax.devices()[:1])
    train_lib.train_and_evaluate(_tiny(configs[-1]), workdir, mesh=mesh)
    rows = [json.loads(line) for line in read_text(workdir, "metrics.jsonl").splitlines()]
    assert np.isfinite(rows[-1]["train_loss"]) and np.isfinite(rows[-1]["val_loss"])
    saved = json.loads(read_text(workdir, "config.json"))
    assert saved["optimizer"]["schedule"] == "my_schedules:step_decay(drops=2)"
