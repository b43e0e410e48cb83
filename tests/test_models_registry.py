"""Blocks by name: settings, how they combine with gsconv_in / eca_in, blocks by import path.

The user's blocks live in ``tests/user_blocks.py`` and are named ``tests.user_blocks:Class``.
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import run_train_py

from bts_jax.configs import test as test_config
from bts_jax.models import (
    attention_names,
    build_model,
    register_attention,
    register_conv,
    registry,
)
from bts_jax.models import nnx as bts_nnx
from tests.user_blocks import ChannelGate
from tools.make_legacy_model_golden import CASES, case_model, variables_shapes

EVERY = ("encoder", "bottleneck", "decoder")


def model_config(**fields):
    config = test_config.get_config()
    config.model.features = (4, 8)
    config.model.update(fields)
    return config.model


@pytest.fixture
def clean_registry():
    saved = {kind: dict(blocks) for kind, blocks in registry._REGISTRY.items()}
    yield
    for kind, blocks in saved.items():
        registry._REGISTRY[kind].clear()
        registry._REGISTRY[kind].update(blocks)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "value,expected",
    [
        ("", {}),
        ("se", dict.fromkeys(EVERY, "se")),
        ("encoder:se, decoder:eca", {"encoder": "se", "decoder": "eca"}),
        ("se,decoder:eca", {"encoder": "se", "bottleneck": "se", "decoder": "eca"}),
        ("decoder:eca,se", {"encoder": "se", "bottleneck": "se", "decoder": "eca"}),
        ("skip:cbam", {"skip": "cbam"}),
        ("tests.user_blocks:ChannelGate", dict.fromkeys(EVERY, "tests.user_blocks:ChannelGate")),
        ("skip:tests.user_blocks:ChannelGate", {"skip": "tests.user_blocks:ChannelGate"}),
    ],
)
def test_attention_setting_sets_the_groups_it_names(value, expected):
    assert registry.parse_groups(value, "attention", "config.model.attention") == expected


@pytest.mark.parametrize(
    "kind,value,message",
    [
        ("attention", "encoder:se,encoder:eca", "give group 'encoder' one name, once"),
        ("attention", "decoder:", "give group 'decoder' one name"),
        ("attention", "se,cbam", "two names without a group"),
        ("conv", "skip:ghost", "no conv group 'skip'"),
    ],
)
def test_malformed_settings_are_named(kind, value, message):
    with pytest.raises(ValueError, match=f"config.model.{kind}=.*{message}"):
        registry.parse_groups(value, kind, f"config.model.{kind}")


def test_names_override_gsconv_in_and_eca_in_group_by_group():
    paper = model_config()  # gsconv_in = eca_in = encoder,bottleneck,decoder
    model = build_model(paper)
    assert model._check_fields() == {
        "conv": dict.fromkeys(EVERY, "gsconv"),
        "attention": {**dict.fromkeys(EVERY, "eca"), "skip": "none"},
    }
    blocks = build_model(model_config(attention="se"))._check_fields()
    assert blocks["attention"] == {**dict.fromkeys(EVERY, "se"), "skip": "none"}
    assert blocks["conv"] == dict.fromkeys(EVERY, "gsconv")
    # Groups the setting leaves out keep what eca_in gives them.
    pairs = build_model(model_config(attention="encoder:se,skip:scse", conv="decoder:ghost"))
    assert pairs._check_fields() == {
        "conv": {"encoder": "gsconv", "bottleneck": "gsconv", "decoder": "ghost"},
        "attention": {"encoder": "se", "bottleneck": "eca", "decoder": "eca", "skip": "scse"},
    }


@pytest.mark.parametrize(
    "fields,names",
    [
        (dict(eca_in="encoder", attention="eca"), ("attention='eca'", "eca_in='encoder'")),
        (dict(eca_in="encoder,skip", attention="decoder:eca"), ("attention=", "eca_in=")),
        (dict(gsconv_in="decoder", conv="gsconv"), ("conv='gsconv'", "gsconv_in='decoder'")),
    ],
)
def test_placing_the_legacy_block_where_its_switch_says_no_names_both_settings(fields, names):
    with pytest.raises(ValueError) as error:
        build_model(model_config(**fields))
    for name in names:
        assert f"config.model.{name}" in str(error.value)


def test_legacy_block_by_name_is_fine_where_its_switch_is_empty_or_agrees():
    for fields in [
        dict(eca_in="", attention="eca"),
        dict(gsconv_in="", conv="encoder:gsconv"),
        dict(attention="decoder:eca"),  # eca_in lists the decoder
    ]:
        build_model(model_config(**fields))


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(attention="sse"), r"config.model.attention: unknown attention block 'sse'"),
        (dict(conv="encoder:se"), r"config.model.conv: unknown conv block 'se'"),
        (dict(attention="no_such_package.blocks:Gate"), r"cannot import .*No module named"),
        (dict(attention="tests.user_blocks:Nope"), r"cannot import .*AttributeError"),
        (
            dict(attention="decoder:tests.user_blocks:HalvingAttention"),
            r"config.model.attention \(decoder\): the attention block "
            r"'tests.user_blocks:HalvingAttention' maps an input of shape \(1, 8, 8, 8\) to "
            r"\(1, 8, 8, 4\), expected \(1, 8, 8, 8\)",
        ),
        (
            dict(conv="tests.user_blocks:ChannelGate"),
            r"config.model.conv \(encoder\): the conv block 'tests.user_blocks:ChannelGate' "
            r"failed on an input",
        ),
        (dict(se_reduction=0), r"config.model.se_reduction must be >= 1"),
        (dict(conv="decoder:gsconv", gsconv_in="", features=(4, 7)), r"odd widths \[7\]"),
    ],
)
def test_build_model_names_the_setting_of_a_bad_block(fields, message):
    with pytest.raises(ValueError, match=message):
        build_model(model_config(**fields))


def test_configs_without_the_new_fields_build_as_before():
    config = model_config()
    for field in ("conv", "attention", "se_reduction"):
        del config[field]
    assert build_model(config)._check_fields() == build_model(model_config())._check_fields()


# The legacy cases spelled with the new fields only.
NEW_SPELLING = {
    "unet_baseline": dict(attention="none", conv="double_conv"),
    "paper": dict(attention="eca", conv="gsconv"),
    "eca_only": dict(attention="eca", conv="double_conv"),
    "gsconv_only": dict(attention="none", conv="gsconv"),
    "skip_eca": dict(attention="encoder:eca,skip:eca", conv="decoder:gsconv"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_new_spelling_of_a_legacy_config_is_the_same_program(case):
    legacy = case_model(case, tiny=True).clone(features=(4, 8))  # 2 stages: quick to trace
    spelled = legacy.clone(gsconv_in=(), eca_in=(), **NEW_SPELLING[case])
    assert variables_shapes(spelled) == variables_shapes(legacy)
    x = jnp.zeros((2, 8, 8, 1))
    variables = jax.eval_shape(lambda: legacy.init(jax.random.key(0), x, train=False))

    def program(model):
        def apply(v, x):
            return model.apply(v, x, train=True, mutable=["batch_stats"])

        return jax.jit(apply).lower(variables, x).as_text()

    # The same program, names included (train mode runs every module): bit-identical outputs
    # for the same variables, and the same init.
    assert program(spelled) == program(legacy)


# ----------------------------------------------------------------------------- user blocks


def _random_like(shapes):
    """Positive random values of the given shapes (BatchNorm variances included), from NumPy."""
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)


def _one_train_step(model, x):
    # Abstract init filled with 0.1 (positive variances): only the train step is compiled.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    variables = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    chex.assert_tree_all_finite(grads)
    return variables


def test_user_blocks_by_import_path_train_a_step():
    model = build_model(
        model_config(
            gsconv_in="",
            eca_in="",
            attention="encoder:tests.user_blocks:ChannelGate,skip:tests.user_blocks:make_gate",
            conv="decoder:tests.user_blocks:PlainConv",
        )
    )
    variables = _one_train_step(model, jnp.ones((2, 4, 4, 1)))
    params = variables["params"]
    chex.assert_shape(params["enc_0"]["attention"]["logit"], (4,))
    chex.assert_shape(params["skip_attention_0"]["logit"], (8,))
    assert set(params["dec_0"]["conv_1"]) == {"Conv_0", "BatchNorm_0"}
    assert "BatchNorm_0" in variables["batch_stats"]["dec_0"]["conv_1"]


def test_registered_blocks_by_name(clean_registry):
    register_attention("gate", ChannelGate)
    register_conv("plain", registry.resolve("conv", "tests.user_blocks:PlainConv", "test"))
    assert "gate" in attention_names()
    model = build_model(model_config(attention="gate", conv="bottleneck:plain"))
    x = jnp.ones((1, 4, 4, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    assert set(params["bottleneck"]["conv_0"]) == {"Conv_0", "BatchNorm_0"}
    chex.assert_shape(params["dec_1"]["attention"]["logit"], (4,))
    with pytest.raises(ValueError, match="registered already"):
        register_attention("gate", ChannelGate)
    register_attention("gate", ChannelGate, replace=True)
    for bad in ("Gate", "my-gate", "skip", "a:b"):
        with pytest.raises(ValueError, match="lower-case"):
            register_attention(bad, ChannelGate)


def test_a_class_without_strides_serves_stride_one_only():
    factory = registry.resolve("attention", "tests.user_blocks:ChannelGate", "where")
    common = dict(name=None, dtype=jnp.float32, param_dtype=jnp.float32, options=None)
    assert factory(6, **common).channels == 6
    with pytest.raises(ValueError, match="no `strides` field"):
        factory(6, strides=2, **common)


@pytest.mark.slow
def test_nnx_unet_takes_zoo_and_user_blocks():
    fields = dict(
        features=(4,),
        attention="encoder:se,bottleneck:tests.user_blocks:ChannelGate,decoder:coord,skip:cbam",
        conv="ghost,decoder:dsconv,encoder:tests.user_blocks:PlainConv",
    )
    linen = build_model(model_config(**fields))
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 1))
    variables = _random_like(jax.eval_shape(lambda: linen.init(jax.random.key(1), x, train=False)))
    model = bts_nnx.UNet.from_linen(linen, variables)
    assert model.encoder[0].eca is None and model.skip_attention[0] is not None
    assert "logit" in nnx.state(model.bottleneck.block, nnx.Param)["attention"]
    expected = jax.jit(lambda v, x: linen.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x, train=False))(model, x), expected, rtol=1e-6, atol=1e-6
    )
    back = bts_nnx.to_linen_variables(nnx.state(model))
    chex.assert_trees_all_equal(back, variables)


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_train_py_trains_zoo_blocks_named_on_the_command_line(tmp_path):
    workdir = tmp_path / "zoo"
    done = run_train_py(
        f"--workdir={workdir}",
        "--config.num_epochs=1",
        "--config.num_predictions=1",
        "--config.model.features=4",  # one stage: every group, the smallest program
        "--config.model.attention=cbam,skip:se",
        "--config.model.conv=ghost",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation (best checkpoint, step 6)" in done.stdout
    with open(workdir / "config.json") as f:
        model = json.load(f)["model"]
    assert (model["attention"], model["conv"]) == ("cbam,skip:se", "ghost")
