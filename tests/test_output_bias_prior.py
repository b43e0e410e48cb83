"""``config.model.output_bias_prior``: the head starts at p, "auto" from the training split only.

The models here have one stage of width 4 on 4x4 inputs (the prior does not depend on the size).
"""

import os

import chex
import jax
import numpy as np
import optax
import pytest
from absl import flags
from helpers import tiny_config
from ml_collections import config_flags

from bts_jax import data as data_lib
from bts_jax import sharding
from bts_jax.models import build_model
from bts_jax.train import seeds
from bts_jax.train import state as state_lib
from bts_jax.train.config_checks import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(**overrides):
    return tiny_config(**{"model.features": (4,), "data.image_size": 4, **overrides})


def initial_params(config, **kwargs):
    model = build_model(config.model)
    mesh = sharding.make_mesh(jax.devices()[:1])
    return state_lib.create_train_state(config, model, optax.adam(1e-3), mesh, **kwargs).params


@pytest.mark.slow
def test_unset_prior_is_todays_initialisation_bit_for_bit():
    config = small()
    assert config.model.output_bias_prior is None
    model = build_model(config.model)
    init_rng, _ = jax.random.split(jax.random.key(config.seed))
    expected = model.init(init_rng, np.zeros((1, 4, 4, 1), np.float32), train=False)["params"]
    chex.assert_trees_all_equal(initial_params(config), expected)


@pytest.mark.slow
def test_a_set_prior_gives_sigmoid_bias_p_and_changes_nothing_else():
    params = initial_params(small(**{"model.output_bias_prior": 0.02}))
    np.testing.assert_allclose(jax.nn.sigmoid(params["head"]["bias"]), [0.02], rtol=1e-6)
    plain = initial_params(small())

    def without_bias(p):
        return {**p, "head": p["head"]["kernel"]}

    chex.assert_trees_all_equal(without_bias(params), without_bias(plain))


@pytest.mark.slow
def test_auto_takes_the_given_training_fraction_and_needs_one():
    config = small(**{"model.output_bias_prior": "auto"})
    params = initial_params(config, train_fraction=0.03)
    np.testing.assert_allclose(jax.nn.sigmoid(params["head"]["bias"]), [0.03], rtol=1e-6)
    with pytest.raises(ValueError, match=r"output_bias_prior='auto' needs the training split"):
        state_lib.output_bias_prior(config)
    with pytest.raises(ValueError, match=r"'auto': the training split's tumour pixel fraction"):
        state_lib.output_bias_prior(config, 0.0)  # A training split without tumour.


def test_the_config_check_refuses_an_invalid_prior_before_anything_is_built():
    config = small(**{"model.output_bias_prior": 1.0})
    with pytest.raises(ValueError, match=r"config\.model\.output_bias_prior=1\.0"):
        validate_config(config, device_count=1, process_count=1)


def test_the_record_names_the_setting_prior_and_bias():
    record = state_lib.output_bias_record(small(**{"model.output_bias_prior": "auto"}), 2, 0.2)
    assert record["setting"] == "auto" and record["prior"] == 0.2
    np.testing.assert_allclose(record["bias"], [0.0, np.log(0.2 / 0.8)], rtol=1e-6)
    assert state_lib.output_bias_record(small(), 1) is None


@pytest.mark.slow
def test_each_seed_starts_at_its_own_prior_and_stacks_without_batch_stats():
    config = small(**{"num_seeds": 2, "model.output_bias_prior": "auto", "model.norm": "layer"})
    model = build_model(config.model)
    devices = jax.devices()[:2]
    state = state_lib.create_seed_train_states(
        config,
        model,
        optax.adam(1e-3),
        sharding.make_seed_mesh(2, devices),
        train_fractions=[0.01, 0.2],
    )
    probabilities = jax.nn.sigmoid(state.params["head"]["bias"])
    np.testing.assert_allclose(probabilities, [[0.01], [0.2]], rtol=1e-5)
    # A model without BatchNorm: every seed's state has empty batch_stats, stacked or not.
    singles = state_lib.unstack_train_state(state, sharding.make_mesh(devices))
    assert state.batch_stats == {} and [s.batch_stats for s in singles] == [{}, {}]
    np.testing.assert_allclose(jax.nn.sigmoid(singles[1].params["head"]["bias"]), [0.2], rtol=1e-5)


@pytest.mark.slow
def test_auto_reads_the_training_split_alone():
    config = tiny_config(**{"model.output_bias_prior": "auto"})
    pipeline = data_lib.InputPipeline(config, process_index=0, process_count=1)
    # The oracle: the masks the evaluation pipeline gives for each split, valid entries only.
    oracle = {}
    for split in ("train", "validation"):
        masks = [b["mask"][b["valid"]] for b in pipeline.eval_batches(split)]
        oracle[split] = data_lib.mask_fraction(np.concatenate(masks))
    # The sample's splits differ enough that reading the wrong one would show.
    assert abs(oracle["train"] - oracle["validation"]) > 0.003
    run = seeds.SeedRun(config, "unused", pipeline)
    assert run.tumour_fraction() == pytest.approx(oracle["train"], abs=1e-12)
    assert data_lib.tumour_pixel_fraction(config, "validation") == pytest.approx(
        oracle["validation"], abs=1e-12
    )
    assert seeds.SeedRun(tiny_config(), "unused", pipeline).tumour_fraction() is None


def test_mask_fraction_counts_nonzero_pixels():
    assert data_lib.mask_fraction(np.array([[[0, 1], [0, 0]], [[1, 1], [0, 0]]])) == 3 / 8
    assert data_lib.mask_fraction(np.zeros((0, 4, 4))) == 0.0


@pytest.mark.parametrize("value,expected", [("0.015", 0.015), ("auto", "auto"), ("None", None)])
def test_the_command_line_sets_the_prior_and_the_norm(value, expected):
    argv = [
        "train.py",
        f"--config={os.path.join(REPO, 'configs', 'test.py')}",
        f"--config.model.output_bias_prior={value}",
        "--config.model.norm=batch(momentum=0.99)",
    ]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    assert flag_values.config.model.output_bias_prior == expected
    assert flag_values.config.model.norm == "batch(momentum=0.99)"


def test_prior_fraction_is_what_create_train_state_needs():
    # Code that builds a state outside the train loop (the benchmarks) gets the training split's
    # fraction for "auto", and nothing to compute otherwise.
    assert state_lib.prior_fraction(tiny_config()) is None
    assert state_lib.prior_fraction(tiny_config(**{"model.output_bias_prior": 0.1})) is None
    config = tiny_config(**{"model.output_bias_prior": "auto"})
    fraction = state_lib.prior_fraction(config)
    assert fraction == data_lib.tumour_pixel_fraction(config, "train") and 0 < fraction < 0.5
    model = build_model(config.model)
    optimizer = optax.adam(1e-3)
    mesh = sharding.make_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="needs the training split's tumour pixel fraction"):
        state_lib.create_train_state(config, model, optimizer, mesh)
    state = state_lib.create_train_state(config, model, optimizer, mesh, train_fraction=fraction)
    np.testing.assert_allclose(jax.nn.sigmoid(state.params["head"]["bias"]), [fraction], rtol=1e-5)
