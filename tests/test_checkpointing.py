"""The one rule for which checkpoint of a workdir is used, and config.json round trips."""

import json
import logging

import jax.numpy as jnp
import ml_collections
import pytest
from absl import logging as absl_logging

from bts_jax import workdir as workdir_lib
from bts_jax.train.state import TrainState


def _state(value):
    return TrainState(
        step=jnp.asarray(value, jnp.int32),
        params={"w": jnp.full(3, float(value))},
        batch_stats={},
        opt_state={},
        rng=jnp.zeros(2, jnp.uint32),
    )


def _config(max_to_keep=2):
    config = ml_collections.ConfigDict()
    config.checkpoint = ml_collections.ConfigDict({"max_to_keep": max_to_keep})
    config.model = ml_collections.ConfigDict({"features": (4, 8)})
    return config


def _save(workdir, steps, best_step=None):
    latest, best = workdir_lib.checkpoint_managers(workdir, _config())
    for step in steps:
        workdir_lib.save_checkpoint(latest, step, _state(step), {"history": []})
    if best_step is not None:
        workdir_lib.save_checkpoint(
            best, best_step, _state(best_step), {"history": []}, {"val_miou": 0.5}
        )
    latest.close()
    best.close()


def test_best_is_used_when_present(tmp_path):
    _save(tmp_path, [2, 4, 6], best_step=4)
    assert workdir_lib.resolve_checkpoint(tmp_path, "best") == (str(tmp_path / "best"), 4)
    assert workdir_lib.resolve_checkpoint(tmp_path, "latest") == (
        str(tmp_path / "checkpoints"),
        6,
    )
    restored = workdir_lib.restore_train_state(tmp_path, _state(0), "best")
    assert int(restored.step) == 4 and float(restored.params["w"][0]) == 4.0


def test_best_falls_back_to_latest_with_a_warning(tmp_path, caplog):
    _save(tmp_path, [2, 4])
    absl_logging.get_absl_logger().propagate = True
    with caplog.at_level(logging.WARNING):
        found = workdir_lib.resolve_checkpoint(tmp_path, "best")
    assert found == (str(tmp_path / "checkpoints"), 4)
    assert "has no best checkpoint; using the latest (step 4)" in caplog.text


def test_errors_name_the_choice_and_the_workdir(tmp_path):
    with pytest.raises(ValueError, match="which='last'"):
        workdir_lib.resolve_checkpoint(tmp_path, "last")
    with pytest.raises(FileNotFoundError, match=f"No checkpoint in {tmp_path}"):
        workdir_lib.resolve_checkpoint(tmp_path, "best")


def test_config_round_trip_restores_tuples(tmp_path):
    config = _config()
    workdir_lib.save_config(config, tmp_path)
    loaded = workdir_lib.load_config(tmp_path)
    assert loaded.model.features == (4, 8)
    assert loaded.checkpoint.max_to_keep == 2


def test_meta_with_nan_is_saved_as_strict_json(tmp_path):
    latest, _ = workdir_lib.checkpoint_managers(tmp_path, _config())
    meta = {"history": [{"epoch": 1, "val_loss": float("nan")}], "best_miou": None}
    workdir_lib.save_checkpoint(latest, 2, _state(2), meta)
    latest.close()
    with open(tmp_path / "checkpoints" / "2" / "meta" / "metadata") as f:
        saved = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"{c} in the meta"))
    assert saved["history"][0]["val_loss"] is None


def test_a_step_already_saved_is_not_saved_again(tmp_path):
    """A run resumed before a save it had completed (e.g. best/) recomputes that step: Orbax
    skips it, which the kill safety of train_and_evaluate relies on."""
    _save(tmp_path, [], best_step=4)
    _, best = workdir_lib.checkpoint_managers(tmp_path, _config())
    workdir_lib.save_checkpoint(best, 4, _state(4), {"history": []}, {"val_miou": 0.5})
    best.close()
    assert workdir_lib.resolve_checkpoint(tmp_path, "best") == (str(tmp_path / "best"), 4)


def test_temporary_folders_of_a_killed_save_are_never_restored_and_then_deleted(tmp_path):
    _save(tmp_path, [2])
    # What a run killed while writing step 4 leaves: Orbax's temporary folder, half written.
    leftover = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp"
    leftover.mkdir()
    (leftover / "half_written").write_bytes(b"\0")
    assert workdir_lib.latest_saved_step(tmp_path) == 2
    assert workdir_lib.resolve_checkpoint(tmp_path, "latest")[1] == 2
    latest, best = workdir_lib.checkpoint_managers(tmp_path, _config())
    latest.close()
    best.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_latest_saved_step_of_a_new_workdir_is_none(tmp_path):
    assert workdir_lib.latest_saved_step(tmp_path / "new") is None
    assert not (tmp_path / "new").exists()
