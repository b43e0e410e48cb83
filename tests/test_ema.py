"""Weight averaging (EMA): the update, the state, the one rule for which weights are evaluated,
checkpoints, inference from an EMA workdir, old workdirs, and the resume guard.

Nothing here trains a run: a toy model checks the steps, and the workdirs are written directly
(their ``ema`` made to differ from the weights, so that using the wrong ones shows). Resuming an
EMA run exactly, with K seeds in one program, is checked by tests/test_seeds.py, whose 2-seed run
averages its weights.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import tiny_config

from bts_jax import data as data_lib
from bts_jax import inference, sharding
from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.inference import export
from bts_jax.models import build_model
from bts_jax.train import ema as ema_lib
from bts_jax.train import state as state_lib
from bts_jax.train import steps
from bts_jax.train.loss_builder import loss_from_config
from bts_jax.workdir.configs import ConfigChange, unresumable_changes

IMAGE_SIZE = 8
EMA = {"ema_decay": 0.9, "ema_start_step": 2}


class _Toy(nn.Module):
    """A conv, BatchNorm and a 1x1 head: a segmentation model that compiles in a moment."""

    num_classes: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        return nn.Conv(self.num_classes, (1, 1), name="head")(nn.relu(x))


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((4, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32),
        "mask": (rng.random((4, IMAGE_SIZE, IMAGE_SIZE)) > 0.7).astype(np.int32),
        "valid": np.array([True, True, True, False]),
    }


# Today's loss (bce_dice at weights 1 and 1), as the trainer builds it from a config.
BCE_DICE = loss_from_config(ml_collections.ConfigDict({"name": ""}))


def _toy_state(*, ema, seed=0):
    init = state_lib.state_initializer(IMAGE_SIZE, _Toy(), optax.adam(1e-2), ema=ema)
    return init(jax.random.key(seed))


def _step(state, batch, ema_decay=0.0, ema_start_step=0):
    return _jitted_step(ema_decay, ema_start_step)(state, batch)


@functools.cache
def _jitted_step(ema_decay, ema_start_step):
    return jax.jit(
        functools.partial(
            steps.train_step,
            model=_Toy(),
            optimizer=optax.adam(1e-2),
            loss_fn=BCE_DICE,
            ema_decay=ema_decay,
            ema_start_step=ema_start_step,
        )
    )


# ----------------------------------------------------------------------------- the update


def test_update_ema_matches_a_hand_computation():
    decay, start = 0.9, 2
    weights = [np.array([1.0, -2.0, 4.0]) * (t + 1) + t**2 for t in range(6)]
    ema = {"w": jnp.asarray(weights[0], jnp.float32)}
    expected = weights[0]
    for t in range(1, 6):
        ema = ema_lib.update_ema(
            ema,
            {"w": jnp.asarray(weights[t], jnp.float32)},
            jnp.int32(t),
            decay=decay,
            start_step=start,
        )
        # Steps 1 and 2 set the average to the weights; from step 3 it lags them.
        expected = weights[t] if t <= start else decay * expected + (1 - decay) * weights[t]
        np.testing.assert_allclose(np.asarray(ema["w"]), expected, rtol=1e-6)
        assert ema["w"].dtype == jnp.float32
    # The hand value after step 5: two averaged steps past the weights of step 2.
    by_hand = 0.9 * (0.9 * weights[2] + 0.1 * weights[3]) + 0.1 * weights[4]
    by_hand = 0.9 * by_hand + 0.1 * weights[5]
    np.testing.assert_allclose(np.asarray(ema["w"]), by_hand, rtol=1e-6)


# ----------------------------------------------------------------------------- the state and step


def test_without_averaging_the_state_is_the_state_of_before():
    state = _toy_state(ema=False)
    assert type(state) is state_lib.TrainState
    names = [f.name for f in dataclasses.fields(state)]
    assert names == ["step", "params", "batch_stats", "opt_state", "rng"]
    averaged = _toy_state(ema=True)
    assert type(averaged) is state_lib.EmaTrainState
    # The average starts at the initial weights, BatchNorm statistics included.
    chex.assert_trees_all_equal(
        averaged.ema, {"params": averaged.params, "batch_stats": averaged.batch_stats}
    )
    for config, kind in ((tiny_config(), state_lib.TrainState), (tiny_config(**EMA), None)):
        run_mesh = sharding.make_mesh(jax.devices()[:1])
        abstract = state_lib.abstract_train_state(config, _Toy(), optax.adam(1e-2), run_mesh)
        assert type(abstract) is (kind or state_lib.EmaTrainState)


def test_averaging_never_changes_the_trained_weights():
    # Two differently compiled programs giving the same bits is a fact about the compiler flags
    # users run: XLA's defaults. The suite's quick-compile flags (tests/conftest.py) can round one
    # gradient entry of the averaging program 1 ulp apart, so this runs in a process of its own
    # with XLA's default flags (and its one CPU device).
    done = subprocess.run(
        [sys.executable, "-c", "import test_ema; test_ema.check_averaging_keeps_the_weights()"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
        env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("3 steps: the weights of both runs are equal")


def check_averaging_keeps_the_weights():
    """Three steps with and without the average: every part of the state but it is equal."""
    plain, averaged = _toy_state(ema=False), _toy_state(ema=True)
    for t in range(3):
        plain, plain_metrics = _step(plain, _batch(t))
        averaged, metrics = _step(averaged, _batch(t), ema_decay=0.9, ema_start_step=1)
        chex.assert_trees_all_equal(metrics, plain_metrics)
        for name in ("step", "params", "batch_stats", "opt_state", "rng"):
            chex.assert_trees_all_equal(getattr(averaged, name), getattr(plain, name))
        current = {"params": averaged.params, "batch_stats": averaged.batch_stats}
        if t == 0:
            # Step 1 <= ema_start_step: the average is the weights, exactly.
            chex.assert_trees_all_equal(averaged.ema, current)
            previous = current
        else:
            expected = jax.tree_util.tree_map(lambda e, w: 0.9 * e + 0.1 * w, previous, current)
            chex.assert_trees_all_close(averaged.ema, expected, rtol=1e-6, atol=1e-7)
            previous = averaged.ema
    print("3 steps: the weights of both runs are equal")


def test_the_eval_step_uses_the_average_when_the_state_has_one():
    state = _toy_state(ema=True)
    other = _toy_state(ema=False, seed=1)
    # An average that differs from the weights: another initialisation, shifted statistics.
    ema = {
        "params": other.params,
        "batch_stats": jax.tree_util.tree_map(lambda x: x + 0.5, other.batch_stats),
    }
    state = state.replace(ema=ema)
    batch = _batch(0)
    evaluate = jax.jit(lambda s: steps.eval_step(s, batch, model=_Toy(), loss_fn=BCE_DICE))
    as_average = state_lib.TrainState(
        step=state.step,
        params=ema["params"],
        batch_stats=ema["batch_stats"],
        opt_state=state.opt_state,
        rng=state.rng,
    )
    found, expected = evaluate(state), evaluate(as_average)
    chex.assert_trees_all_equal(found, expected)
    raw = evaluate(state_lib.TrainState(**{f: getattr(state, f) for f in _raw_fields()}))
    assert float(found["loss_sum"]) != float(raw["loss_sum"])
    assert state_lib.eval_variables(state) == ema


def _raw_fields():
    return [f.name for f in dataclasses.fields(state_lib.TrainState)]


def test_evaluated_variables_is_the_one_rule():
    raw = {"params": {"w": 1}, "batch_stats": {"m": 2}}
    average = {"params": {"w": 3}, "batch_stats": {"m": 4}}
    assert workdir_lib.evaluated_variables(raw) == raw
    assert workdir_lib.evaluated_variables({**raw, "ema": None}) == raw
    assert workdir_lib.evaluated_variables({**raw, "ema": average}) == average
    plain, averaged = tiny_config(), tiny_config(**EMA)
    assert (workdir_lib.weights_name(plain), workdir_lib.weights_name(averaged)) == ("raw", "ema")
    assert workdir_lib.describe_weights(plain) == "the raw weights (no EMA)"
    assert workdir_lib.describe_weights(averaged) == (
        "the EMA of the weights (decay 0.9, averaging after step 2)"
    )
    # A config from before the fields existed averages nothing.
    del plain.ema_decay, plain.ema_start_step
    assert workdir_lib.ema_decay_of(plain) == 0.0 and workdir_lib.ema_start_step_of(plain) == 0
    assert not workdir_lib.ema_enabled(plain)


# ----------------------------------------------------------------------------- workdirs


def _write_workdir(path, config, *, shift=0.25):
    """A workdir of ``config`` holding its initial state as best and latest save of step 6.

    With averaging, ``ema`` is the weights plus ``shift`` (statistics too), so it differs.
    """
    mesh = sharding.make_mesh(jax.devices()[:1])
    run_model = _model(config)
    optimizer = optax.adam(1e-3)
    state = state_lib.create_train_state(config, run_model, optimizer, mesh)
    state = state.replace(step=jnp.int32(6))
    if workdir_lib.ema_enabled(config):
        raw = {"params": state.params, "batch_stats": state.batch_stats}
        state = state.replace(ema=jax.tree_util.tree_map(lambda x: x + shift, raw))
    os.makedirs(path, exist_ok=True)
    workdir_lib.save_config(config, path)
    latest, best = workdir_lib.checkpoint_managers(path, config)
    workdir_lib.save_checkpoint(latest, 6, state, {"history": []})
    workdir_lib.save_checkpoint(best, 6, state, {"history": []}, {"val_miou": 0.5})
    latest.close()
    best.close()
    return jax.device_get(state)


def _model(config):
    return build_model(config.model, dtype=config.dtype)


@pytest.fixture(scope="module")
def ema_workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ema") / "run")
    return path, _write_workdir(path, tiny_config(**EMA))


@pytest.mark.slow
def test_a_checkpoint_keeps_the_raw_and_the_averaged_weights(ema_workdir):
    path, saved = ema_workdir
    config = workdir_lib.load_config(path)
    mesh = sharding.make_mesh(jax.devices()[:1])
    abstract = state_lib.abstract_train_state(config, _model(config), optax.adam(1e-3), mesh)
    for which in workdir_lib.CHECKPOINT_CHOICES:
        restored = workdir_lib.restore_train_state(path, abstract, which)
        assert type(restored) is state_lib.EmaTrainState
        chex.assert_trees_all_equal(jax.device_get(restored), saved)


@pytest.mark.slow
def test_predict_and_ensembles_of_an_ema_workdir_use_the_average(ema_workdir, tmp_path):
    path, saved = ema_workdir
    config, model, variables = workdir_lib.load_trained_model(path)
    chex.assert_trees_all_equal(jax.device_get(variables), saved.ema)
    _, members = inference.load_members([path])
    chex.assert_trees_all_equal(jax.device_get(members[0][1]), saved.ema)
    assert inference.member_records([path], "best")[0]["weights"] == "ema"
    image = np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)
    (found,) = inference.predict_probabilities(members, [image], config.data)
    raw = {"params": saved.params, "batch_stats": saved.batch_stats}
    expected, of_raw = _probabilities(model, [saved.ema, raw], image, config)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(found, of_raw, atol=1e-3)


def _probabilities(model, variables, image, config):
    """(H, W) tumour probabilities of ``image`` under each of ``variables``, one compilation."""
    x = data_lib.preprocess_image(image, config.data)[None]
    apply = jax.jit(functools.partial(model.apply, train=False))
    return [np.asarray(jax.nn.sigmoid(apply(v, x)))[0, ..., 0] for v in variables]


@pytest.mark.slow
def test_export_of_an_ema_workdir_bakes_in_the_average(ema_workdir, tmp_path):
    path, saved = ema_workdir
    out = tmp_path / "exported"
    export.export_workdirs(path, out, platforms=("cpu",), saved_model=False)
    record = json.loads((out / export.SETTINGS_FILE).read_text())
    assert record["members"][0]["weights"] == "ema"
    loaded = export.load_exported(out)
    image = np.random.default_rng(1).integers(0, 256, (32, 32), np.uint8)
    (found,) = loaded.predict_probabilities([image])
    config, model, _ = workdir_lib.load_trained_model(path)
    (expected,) = _probabilities(model, [saved.ema], image, config)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)


def _strip_ema_fields(path):
    """Makes ``path``'s config.json one written before weight averaging existed."""
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        saved = json.load(f)
    del saved["ema_decay"], saved["ema_start_step"]
    with open(config_path, "w") as f:
        json.dump(saved, f)


@pytest.mark.slow
def test_an_old_workdir_loads_evaluates_and_resumes(tmp_path):
    path = str(tmp_path / "old")
    saved = _write_workdir(path, tiny_config())
    _strip_ema_fields(path)
    config, model, variables = workdir_lib.load_trained_model(path)
    assert "ema_decay" not in config
    chex.assert_trees_all_equal(
        jax.device_get(variables), {"params": saved.params, "batch_stats": saved.batch_stats}
    )
    assert inference.member_records([path], "latest")[0]["weights"] == "raw"
    # evaluate.py restores the whole state into the abstract state of the saved config.
    mesh = sharding.make_mesh(jax.devices()[:1])
    abstract = state_lib.abstract_train_state(config, model, optax.adam(1e-3), mesh)
    restored = workdir_lib.restore_train_state(path, abstract)
    assert type(restored) is state_lib.TrainState
    chex.assert_trees_all_equal(jax.device_get(restored.params), saved.params)
    # Today's config (ema_decay 0) resumes it unchanged.
    assert workdir_lib.check_config(tiny_config(), path, checkpoint_step=6) == []


def test_turning_averaging_on_or_off_is_refused_on_resume(tmp_path, ema_workdir):
    # The guard reads config.json alone; the checkpoint's step is passed in.
    old = str(tmp_path / "old")
    os.makedirs(old)
    workdir_lib.save_config(tiny_config(), old)
    _strip_ema_fields(old)
    with pytest.raises(workdir_lib.ConfigChangedError, match=r"config\.ema_decay 0\.0 -> 0\.9"):
        workdir_lib.check_config(tiny_config(**EMA), old, 6, allow_change=True)
    path, _ = ema_workdir
    with pytest.raises(workdir_lib.ConfigChangedError, match=r"config\.ema_decay 0\.9 -> 0\.0"):
        workdir_lib.check_config(tiny_config(), path, 6, allow_change=True)
    # Another positive decay keeps the state's layout: an ordinary change, allowed and recorded.
    other = tiny_config(**{**EMA, "ema_decay": 0.99})
    with pytest.raises(workdir_lib.ConfigChangedError, match=r"ema_decay: 0\.9 -> 0\.99"):
        workdir_lib.check_config(other, path, 6)
    changes = workdir_lib.check_config(other, path, 6, allow_change=True)
    assert [(c.field, c.old, c.new) for c in changes] == [("ema_decay", 0.9, 0.99)]
    assert unresumable_changes(changes) == []
    on, off = ConfigChange("ema_decay", 0.0, 0.9), ConfigChange("ema_decay", 0.9, 0.0)
    start = ConfigChange("ema_start_step", 0, 5)
    assert unresumable_changes([start, on, off]) == [on, off]


def test_the_run_summary_says_which_weights_were_evaluated(ema_workdir, tmp_path):
    path, _ = ema_workdir
    result = {"step": 6, "miou": 0.5, "dice": 0.4}
    summary = train_lib.run_summary(path, result)
    assert "Validation (best checkpoint, step 6): miou 0.5000, dice 0.4000" in summary
    assert "Evaluated with the EMA of the weights (decay 0.9, averaging after step 2)." in summary
    plain = str(tmp_path / "plain")
    os.makedirs(plain)
    workdir_lib.save_config(tiny_config(), plain)
    assert "Evaluated with the raw weights (no EMA)." in train_lib.run_summary(plain, result)
