"""Optimisers and schedules by name; old configs keep their numbers bit for bit; a short run."""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import read_text, small_config, tiny_config

from bts_jax import sharding
from bts_jax import train as train_lib
from bts_jax.config_tools import load_config_file
from bts_jax.configs import default, paper, quickstart_v1
from bts_jax.experiments import sweeps
from bts_jax.models import build_model
from bts_jax.naming import calls
from bts_jax.train import losses, optim, registry, schedules, steps
from bts_jax.train import state as state_lib
from bts_jax.train.config_checks import validate_config
from bts_jax.workdir import check_config, save_config

OPTIMIZERS = ("adam", "adamw", "sgd", "lamb")
SCHEDULES = ("constant", "cosine", "linear", "one_cycle", "poly")


def legacy_schedule(optimizer_config, steps_per_epoch, total_steps):
    """``optim.create_learning_rate_schedule`` as it was before the registry (main at bbdd0c3)."""
    base = float(optimizer_config.learning_rate)
    warmup = int(round(optimizer_config.warmup_epochs * steps_per_epoch))
    if optimizer_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, base, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if not warmup:
        return optax.constant_schedule(base)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, base, warmup), optax.constant_schedule(base)], [warmup]
    )


def legacy_optimizer(optimizer_config, schedule):
    """``optim.create_optimizer`` as it was before the registry."""
    if optimizer_config.name == "adam":
        optimizer = optax.adam(schedule)
    else:
        optimizer = optax.adamw(schedule, weight_decay=optimizer_config.weight_decay)
    if optimizer_config.grad_clip_norm > 0:
        optimizer = optax.chain(
            optax.clip_by_global_norm(optimizer_config.grad_clip_norm), optimizer
        )
    return optimizer


def legacy_train_step(state, batch, *, model, optimizer, bce_weight, dice_weight):
    """``steps.train_step`` as it was before the registry: the loss weights as arguments."""
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
            logits, batch["mask"], batch["valid"], bce_weight=bce_weight, dice_weight=dice_weight
        )
        return loss, (updates["batch_stats"], parts)

    (loss, (batch_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    metrics = {
        "loss": loss,
        "cross_entropy": parts["cross_entropy"],
        "dice_loss": parts["dice_loss"],
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics


def _params():
    return {"conv": {"kernel": jnp.full((3, 3, 2, 4), 0.5), "bias": jnp.full((4,), 0.5)}}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_a_finite_step_and_clipping_applies(name):
    config = tiny_config(**{"optimizer.name": name, "optimizer.grad_clip_norm": 1e-3})
    optimizer = optim.create_optimizer(config.optimizer, optax.constant_schedule(1.0))
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    if name == "sgd":  # Plain SGD moves by lr * the clipped gradient: its norm is the clip.
        assert float(optax.tree.norm(updates)) == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("name", ["adamw", "sgd", "lamb"])
def test_weight_decay_with_and_without_norms_and_biases(name):
    params = _params()
    zero = jax.tree.map(jnp.zeros_like, params)
    moved = {}
    for decay_all in (True, False):
        config = tiny_config(
            **{
                "optimizer.name": f"{name}(decay_norms_and_biases={decay_all})",
                "optimizer.weight_decay": 0.1,
            }
        )
        optimizer = optim.create_optimizer(config.optimizer, optax.constant_schedule(1.0))
        updates, _ = optimizer.update(zero, optimizer.init(params), params)
        moved[decay_all] = {k: bool(jnp.any(v != 0)) for k, v in updates["conv"].items()}
    assert moved[True] == {"kernel": True, "bias": True}
    assert moved[False] == {"kernel": True, "bias": False}


def test_optimizer_arguments_and_the_weight_decay_default():
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)

    def update(name, weight_decay=0.0, reference=None):
        config = tiny_config(**{"optimizer.name": name, "optimizer.weight_decay": weight_decay})
        optimizer = optim.create_optimizer(config.optimizer, optax.constant_schedule(0.1))
        ours = optimizer.update(grads, optimizer.init(params), params)[0]
        theirs = reference.update(grads, reference.init(params), params)[0]
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)

    update("sgd(momentum=0.99,nesterov=true)", reference=optax.sgd(0.1, 0.99, nesterov=True))
    update("adamw", 0.05, reference=optax.adamw(0.1, weight_decay=0.05))
    update("adamw(weight_decay=0.2)", 0.05, reference=optax.adamw(0.1, weight_decay=0.2))
    update("lamb", 0.01, reference=optax.lamb(0.1, weight_decay=0.01))
    update("adam(b2=0.99)", reference=optax.adam(0.1, b2=0.99))


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_warms_up_linearly_then_follows_its_formula(name):
    peak, warmup, total = 1e-2, 10, 110
    schedule = schedules.create_schedule(name, peak, warmup, total)
    rates = np.asarray(jax.vmap(schedule)(jnp.arange(total + 1)), np.float64)
    np.testing.assert_allclose(rates[:warmup], peak * np.arange(warmup) / warmup, rtol=1e-6)
    t = np.arange(total - warmup + 1) / (total - warmup)
    expected = {
        "constant": np.full_like(t, peak),
        "cosine": peak * (1 + np.cos(np.pi * t)) / 2,
        "linear": peak * (1 - t),
        "poly": peak * (1 - t) ** 0.9,
    }
    if name in expected:
        np.testing.assert_allclose(rates[warmup:], expected[name], rtol=1e-5, atol=1e-9)
    else:  # One cycle: from peak / 25 up to the peak at 30% of the steps, then down to ~0.
        assert rates[warmup] == pytest.approx(peak / 25, rel=1e-5)
        assert rates[warmup + 30] == pytest.approx(peak, rel=1e-5)
        assert rates[-1] == pytest.approx(peak / 25 / 1e4, rel=1e-3)


def test_schedule_arguments():
    cosine = schedules.create_schedule("cosine(final=0.05)", 1.0, 0, 100)
    assert float(cosine(100)) == pytest.approx(0.05) and float(cosine(0)) == 1.0
    poly = schedules.create_schedule("poly(power=2.0,final=0.1)", 1.0, 0, 100)
    assert float(poly(50)) == pytest.approx(0.1 + 0.9 * 0.25)
    linear = schedules.create_schedule("linear(0.5)", 2.0, 0, 10)
    assert float(linear(10)) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["constant", "cosine"])
@pytest.mark.parametrize("warmup_epochs", [0.0, 0.1, 1.0, 3.0])
def test_old_schedules_give_the_same_rates_bit_for_bit(name, warmup_epochs):
    config = tiny_config(
        **{
            "optimizer.schedule": name,
            "optimizer.warmup_epochs": warmup_epochs,
            "optimizer.learning_rate": 1e-3,
        }
    )
    steps_per_epoch, total = 12, 36
    new = optim.create_learning_rate_schedule(config.optimizer, steps_per_epoch, total)
    old = legacy_schedule(config.optimizer, steps_per_epoch, total)
    step_range = jnp.arange(total + 3)
    for compile_ in (jax.jit, lambda f: f):  # Compiled (as in the train step) and eagerly.
        np.testing.assert_array_equal(
            compile_(jax.vmap(new))(step_range), compile_(jax.vmap(old))(step_range)
        )
    for t in (0, 1, 5, 11, 12, 35, 36, 40):
        assert np.float32(new(t)) == np.float32(old(t)), t


@pytest.mark.parametrize(
    "kind,spec,message",
    [
        ("name", "sgdd", r"config.optimizer.name='sgdd': unknown optimizer 'sgdd'; registered: "),
        ("name", "adamw(decay=1)", r"adamw has no argument 'decay'; its arguments: weight_decay"),
        ("schedule", "cosin", r"config.optimizer.schedule='cosin': unknown schedule 'cosin'"),
        ("schedule", "cosine(end=0)", r"cosine has no argument 'end'; its arguments: final"),
        ("schedule", "my_nope_mod:fn", r"cannot import the schedule 'my_nope_mod:fn'"),
    ],
)
def test_unknown_names_and_arguments_fail_in_the_config_checks(kind, spec, message):
    config = tiny_config(**{f"optimizer.{kind}": spec})
    with pytest.raises(ValueError, match=message):
        validate_config(config, device_count=8, process_count=1)


def test_every_registered_name_is_listed_in_the_error():
    with pytest.raises(ValueError) as error:
        schedules.bind_schedule("nope")
    assert all(name in str(error.value) for name in SCHEDULES)
    assert set(SCHEDULES) <= set(schedules.schedule_names())
    assert set(OPTIMIZERS) <= set(optim.optimizer_names())


@pytest.fixture
def user_schedules(tmp_path, monkeypatch):
    (tmp_path / "my_schedules.py").write_text(
        "import optax\n\n\n"
        "def halving(peak_value, decay_steps, *, every=10):\n"
        "    return optax.exponential_decay(peak_value, every, 0.5, staircase=True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    calls.import_path.cache_clear()
    sys.modules.pop("my_schedules", None)


def test_a_users_schedule_by_import_path_and_registered(user_schedules):
    schedule = schedules.create_schedule("my_schedules:halving(every=5)", 1.0, 2, 100)
    assert [float(schedule(t)) for t in (0, 1, 2, 6, 7, 12)] == [0, 0.5, 1, 1, 0.5, 0.25]
    import my_schedules

    registry.register_schedule("halving", my_schedules.halving)
    try:
        assert float(schedules.create_schedule("halving(3)", 1.0, 0, 10)(3)) == 0.5
    finally:
        registry.SCHEDULES.unregister("halving")


def test_old_workdirs_resume_without_loss_name(tmp_path):
    """A config.json from before the registry (no loss.name) resumes with today's config."""
    config = default.get_config()
    save_config(config, tmp_path)
    saved = json.loads(read_text(tmp_path, "config.json"))
    del saved["loss"]["name"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_config(config, tmp_path, checkpoint_step=6) == []


def _one_device_step_inputs(config):
    # A one-stage model compiles fast; the loss and optimiser are what is compared.
    config.model.features = (4,)
    config.data.image_size = 16
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(2, 16, 16, 1)).astype(np.float32),
        "mask": (rng.random((2, 16, 16)) < 0.2).astype(np.int32),
        "valid": np.array([True, True]),
    }
    return config, batch, sharding.make_mesh(jax.devices()[:1])


@pytest.mark.parametrize(
    "get_config,overrides",
    [
        (quickstart_v1.get_config, {}),  # Adam, cosine after a warmup.
        (paper.get_config, {}),  # Adam, constant (default.py's recipe).
        (
            default.get_config,
            {
                "optimizer.schedule": "cosine",  # Without a warmup.
                "optimizer.name": "adamw",
                "optimizer.weight_decay": 0.05,
                "optimizer.grad_clip_norm": 1e-3,
                "loss.bce_weight": 0.5,
                "loss.dice_weight": 2.0,
            },
        ),
    ],
)
@pytest.mark.slow
def test_old_configs_take_the_same_train_steps_bit_for_bit(get_config, overrides):
    """Three steps of the legacy fields: today's code formula and the registries agree exactly."""
    config = get_config()
    for field, value in overrides.items():
        section, key = field.split(".")
        config[section][key] = value
    config, batch, mesh = _one_device_step_inputs(config)
    model = build_model(config.model, dtype=config.dtype)
    states = {}
    for version in ("new", "old"):
        if version == "new":
            schedule = optim.create_learning_rate_schedule(config.optimizer, 3, 9)
            optimizer = optim.create_optimizer(config.optimizer, schedule)
            step = steps.bind_train_step(config, model, optimizer)
        else:
            schedule = legacy_schedule(config.optimizer, 3, 9)
            optimizer = legacy_optimizer(config.optimizer, schedule)
            step = functools.partial(
                legacy_train_step,
                model=model,
                optimizer=optimizer,
                bce_weight=config.loss.bce_weight,
                dice_weight=config.loss.dice_weight,
            )
        state = state_lib.create_train_state(config, model, optimizer, mesh)
        step = jax.jit(step)
        for _ in range(3):
            state, metrics = step(state, batch)
        states[version] = jax.device_get((state.params, state.opt_state, metrics))
    jax.tree.map(np.testing.assert_array_equal, states["new"], states["old"])


@pytest.mark.slow
def test_a_run_with_other_recipe_parts_trains(tmp_path):
    """configs/test.py for one epoch with a non-default loss, optimiser and schedule."""
    config = small_config(
        **{
            "loss.name": "focal(gamma=2):1,dice(per_image=true):1",
            "optimizer.name": "sgd(momentum=0.9,nesterov=true)",
            "optimizer.learning_rate": 0.05,
            "optimizer.schedule": "poly",
            "optimizer.warmup_epochs": 0.5,
            "num_predictions": 1,
        }
    )
    workdir = str(tmp_path / "recipe")
    train_lib.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(jax.devices()[:1]))
    rows = [json.loads(line) for line in read_text(workdir, "metrics.jsonl").splitlines()]
    assert np.isfinite(rows[-1]["train_loss"]) and np.isfinite(rows[-1]["val_loss"])
    # Poly after a half-epoch warmup ends the epoch at 0: the logged rate is its last step's.
    assert rows[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-9)
    assert json.loads(read_text(workdir, "config.json"))["loss"]["name"].startswith("focal")
    assert os.path.isfile(os.path.join(workdir, "eval_validation.json"))


def test_kernels_only_masks_vectors():
    mask = optim.kernels_only({"k": jnp.ones((3, 3, 1, 2)), "b": jnp.ones(2), "s": jnp.ones(())})
    assert mask == {"k": True, "b": False, "s": False}


def test_a_sweep_varies_recipe_parts_as_ordinary_overrides():
    sweep = ml_collections.ConfigDict()
    sweep.name = "recipe"
    sweep.base_config = "configs/test.py"
    sweep.overrides = {}
    sweep.variants = {
        "bce_dice": {},
        "focal_dice": {"loss": {"name": "focal(gamma=2):1,dice:1"}},
        "nnunet": {"optimizer": {"name": "sgd(momentum=0.99,nesterov=true)", "schedule": "poly"}},
    }
    sweep.baseline = "bce_dice"
    sweep.paper_model = ""
    sweep.seeds = (0,)
    sweep.folds = ()
    definition = sweeps.parse_sweep(sweep)
    base = load_config_file(definition.base_config, os.path.dirname(os.path.dirname(__file__)))
    names = {}
    for cell in sweeps.expand_cells(definition, "unused"):
        config = sweeps.cell_config(definition, base, cell)
        validate_config(config, device_count=8, process_count=1)
        names[cell.variant] = (config.loss.name, config.optimizer.name, config.optimizer.schedule)
    assert names == {
        "bce_dice": ("", "adam", "constant"),
        "focal_dice": ("focal(gamma=2):1,dice:1", "adam", "constant"),
        "nnunet": ("", "sgd(momentum=0.99,nesterov=true)", "poly"),
    }
