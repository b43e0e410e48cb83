"""Training tests on the tiny config: config errors, schedules, sharding, timing, held-out scores.

Whole runs that resume or are killed are in test_train_resume.py; runs over several processes and
from the command line in test_train_processes.py.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    first_batches,
    params_of,
    read_text,
    run_steps,
    small_config,
    tiny_config,
)

from bts_jax import data as data_lib
from bts_jax import evaluation, sharding
from bts_jax import train as train_lib
from bts_jax.train import optim
from bts_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"batch_size": 4}, r"config.batch_size=4 must be a positive multiple of the number of"),
        ({"eval_batch_size": 12}, r"config.eval_batch_size=12"),
        ({"optimizer.name": "sgdm"}, r"config.optimizer.name='sgdm'"),
        ({"optimizer.schedule": "step"}, r"config.optimizer.schedule='step'"),
        ({"dtype": "float16"}, r"config.dtype='float16'"),
        ({"data.image_size": 40}, r"config.data.image_size=40 must be a multiple of 16"),
        ({"num_epochs": 0}, r"config.num_epochs=0"),
        ({"model.eca_in": "encoder,attention"}, r"config.model.eca_in has unknown entries"),
    ],
)
def test_setup_run_rejects_bad_configs_naming_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        train_lib.setup_run(tiny_config(**overrides))


def test_learning_rate_schedules():
    config = tiny_config(**{"optimizer.warmup_epochs": 1.0, "optimizer.learning_rate": 1e-3})
    constant = optim.create_learning_rate_schedule(config.optimizer, 10, 100)
    assert float(constant(0)) == 0.0
    assert float(constant(5)) == pytest.approx(5e-4)
    assert float(constant(50)) == pytest.approx(1e-3)
    config.optimizer.schedule = "cosine"
    cosine = optim.create_learning_rate_schedule(config.optimizer, 10, 100)
    assert float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(55)) == pytest.approx(5e-4, rel=1e-3)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)


def test_gradient_clipping_bounds_the_update():
    config = tiny_config(**{"optimizer.name": "adamw", "optimizer.grad_clip_norm": 1e-3})
    config.optimizer.learning_rate = 1.0
    schedule = optim.create_learning_rate_schedule(config.optimizer, 1, 1)
    optimizer = optim.create_optimizer(config.optimizer, schedule)
    params = {"w": jnp.ones(3)}
    state = optimizer.init(params)
    clipped, _ = optax.clip_by_global_norm(1e-3).update({"w": jnp.full(3, 100.0)}, None)
    assert float(jnp.linalg.norm(clipped["w"])) == pytest.approx(1e-3, rel=1e-4)
    updates, _ = optimizer.update({"w": jnp.full(3, 100.0)}, state, params)
    assert np.all(np.isfinite(updates["w"]))


# ----------------------------------------------------------------------------- sharded step


@pytest.fixture(scope="module")
def two_batches():
    config = small_config()
    return config, first_batches(config, 2)


@pytest.mark.slow
def test_sharded_step_on_8_devices_equals_single_device_step(two_batches):
    config, batches = two_batches
    assert jax.device_count() == 8
    state8, metrics8 = run_steps(config, sharding.make_mesh(), batches)
    state1, metrics1 = run_steps(config, sharding.make_mesh(jax.devices()[:1]), batches)
    assert state8.params["head"]["kernel"].sharding.is_fully_replicated
    assert int(state8.step) == int(state1.step) == 2
    chex.assert_trees_all_close(params_of(state8), params_of(state1), rtol=1e-4, atol=2e-6)
    chex.assert_trees_all_close(
        jax.device_get(state8.batch_stats), jax.device_get(state1.batch_stats), atol=1e-5
    )
    assert metrics8["loss"] == pytest.approx(metrics1["loss"], rel=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state_and_loss(two_batches):
    _, batches = two_batches
    config = small_config(dtype="bfloat16")
    state, step_metrics = run_steps(config, sharding.make_mesh(), batches[:1])
    leaves = jax.tree_util.tree_leaves(
        jax.device_get((state.params, state.batch_stats, state.opt_state))
    )
    floating = {leaf.dtype for leaf in leaves if np.issubdtype(leaf.dtype, np.floating)}
    assert floating == {np.dtype(np.float32)}
    assert step_metrics["loss"].dtype == np.float32 and np.isfinite(step_metrics["loss"])


@pytest.mark.slow
def test_batch_statistics_are_those_of_the_global_batch(two_batches):
    """With 8 devices and 1 image each, per-device BatchNorm would give other statistics."""
    config, batches = two_batches
    mesh = sharding.make_mesh()
    run = train_lib.setup_run(config, mesh)
    state = state_lib.create_train_state(config, run.model, run.optimizer, mesh)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    # Reference: the model's own train-mode update on the whole batch at once, on one device.
    _, expected = jax.jit(lambda v, x: run.model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(batches[0]["image"])
    )
    new_state, _ = run.train_fn(state, sharding.make_global_batch(batches[0], mesh))
    chex.assert_trees_all_close(
        jax.device_get(new_state.batch_stats), jax.device_get(expected["batch_stats"]), atol=1e-5
    )


def test_eval_counts_every_image_once_with_padding(two_batches):
    config, _ = two_batches
    mesh = sharding.make_mesh()
    run = train_lib.setup_run(config, mesh)
    state = state_lib.create_train_state(config, run.model, run.optimizer, mesh)
    batches = data_lib.make_dataset(config, "validation", process_index=0, process_count=1)
    result = evaluation.evaluate(run.eval_fn, state, batches, mesh, num_classes=1).metrics
    expected = len(data_lib.get_split_ids(config)["validation"])
    assert result["num_images"] == expected
    assert 0.0 <= result["miou"] <= 1.0 and np.isfinite(result["loss"])


# ----------------------------------------------------------------------------- the loop's timing


def test_due_events_is_the_loops_only_timing_rule():
    def events(step, **overrides):
        settings = dict(
            steps_per_epoch=6,
            total_steps=12,
            log_every=4,
            eval_every_epochs=1,
            checkpoint_every=0,
        )
        settings.update(overrides)
        return train_lib.due_events(step, **settings)

    assert events(1) == frozenset()
    assert events(4) == {"log"}
    assert events(6) == {"log", "epoch_end", "eval", "checkpoint"}
    assert events(12) == {"log", "epoch_end", "eval", "checkpoint"}
    # Mid-epoch checkpoints every 4 steps, and the last step always saves and evaluates.
    assert events(4, checkpoint_every=4) == {"log", "checkpoint"}
    assert events(6, checkpoint_every=4) == {"log", "epoch_end", "eval"}
    assert events(12, checkpoint_every=5, eval_every_epochs=5) == {
        "log",
        "epoch_end",
        "eval",
        "checkpoint",
    }
    assert events(6, eval_every_epochs=2) == {"log", "epoch_end", "checkpoint"}


@pytest.mark.slow
def test_run_reports_the_selected_checkpoint_on_the_held_out_test_split(tmp_path):
    config = small_config(**{"data.test_fraction": 0.15, "num_epochs": 1})
    workdir = tmp_path / "with_test"
    (trained,) = train_lib.train_and_evaluate(
        config, str(workdir), mesh=sharding.make_mesh(jax.devices()[:1])
    )
    result = trained.metrics
    split = json.loads(read_text(workdir, "data_split.json"))
    assert len(split["test"]) == 9 and not set(split["test"]) & set(split["train"])

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in eval JSON"))

    validation = strict(read_text(workdir, "eval_validation.json"))
    test = strict(read_text(workdir, "eval_test.json"))
    assert validation["step"] == test["step"] == result["step"]
    assert test["num_images"] == 9 and validation["num_images"] == 12
    rows = read_text(workdir, "per_image_test.csv").splitlines()
    assert rows[0] == ",".join(evaluation.PER_IMAGE_COLUMNS)
    assert sorted(row.split(",")[0] for row in rows[1:]) == sorted(split["test"])
    assert all(row.split(",")[1] in data_lib.TUMOUR_TYPES[1:] for row in rows[1:])
    summary = train_lib.run_summary(str(workdir), result)
    assert f"Test (best checkpoint, step {test['step']}): miou {test['miou']:.4f}" in summary
