"""Norms by name (``config.model.norm``): parsing, every norm in every place, a user's norm.

The norms' numbers are checked against a NumPy oracle of Wu and He's (2018) definitions; the
models run at one stage of width 4 on 4x4 inputs, initialised and applied in one compiled call.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax.configs import test as test_config
from bts_jax.models import UNet, build_model, norm_names, norms, register_norm
from bts_jax.models.interop import nnx as bts_nnx
from bts_jax.train.config_checks import validate_config

NORMS = ("batch", "group(2)", "instance", "layer", "none")
# The paper model (GSConv's two norms), and the U-Net's double convolution in the encoder with
# every zoo block that has a norm (ghost, dsconv, cbam, coord) elsewhere.
MODELS = {
    "paper": dict(gsconv_in=("encoder", "bottleneck", "decoder"), eca_in=("encoder", "decoder")),
    "unet_zoo": dict(
        conv="bottleneck:ghost,decoder:dsconv", attention="encoder:cbam,decoder:coord"
    ),
}
X = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))


def tiny(model: str, norm: str, features=(4,)) -> UNet:
    return UNet(features=features, norm=norm, **MODELS[model])


def leaf_paths(tree) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path) for path, _ in flat}


@pytest.fixture
def clean_norms():
    saved = dict(norms._NORMS)
    yield
    norms._NORMS.clear()
    norms._NORMS.update(saved)
    norms.resolve_norm.cache_clear()


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("batch", norms.NormSpec("batch")),
        (" group(8) ", norms.NormSpec("group", (8,))),
        (
            "batch(momentum=0.99, epsilon=1e-3)",
            norms.NormSpec("batch", (), (("epsilon", 1e-3), ("momentum", 0.99))),
        ),
        ("tests.user_blocks:RMSNorm(1e-5)", norms.NormSpec("tests.user_blocks:RMSNorm", (1e-5,))),
        ("none()", norms.NormSpec("none")),
    ],
)
def test_parse_norm_reads_names_and_literal_arguments(spec, expected):
    assert norms.parse_norm(spec) == expected


@pytest.mark.parametrize(
    "spec,match",
    [
        ("group(8", "is not a norm"),
        ("", "is not a norm"),
        ("group(x)", "must be Python literals"),
        ("group(*a)", "must be Python literals"),
        ("bogus", "unknown norm 'bogus'; registered: batch, group, instance, layer, none"),
        ("batch(foo=1)", "unexpected keyword argument 'foo'"),
        ("group(2, 3, 4)", "too many positional arguments"),
        ("group(name='x')", r"\['name'\] are set by the model"),
        ("tests.user_blocks:Nope", r"cannot import the norm .*AttributeError"),
    ],
)
def test_invalid_norms_name_the_setting(spec, match):
    with pytest.raises(ValueError, match=match) as error:
        norms.resolve_norm(spec, "config.model.norm")
    assert "config.model.norm" in str(error.value)


def test_unknown_norm_is_refused_by_the_config_check_before_anything_is_built():
    config = test_config.get_config()
    config.model.norm = "batchnorm"
    with pytest.raises(ValueError, match=r"config\.model\.norm: unknown norm 'batchnorm'"):
        validate_config(config, device_count=1, process_count=1)


def test_the_registry_lists_the_built_in_norms():
    assert set(NORMS[:1] + ("group", "instance", "layer", "none")) <= set(norm_names())


def test_register_norm_refuses_bad_and_taken_names(clean_norms):
    with pytest.raises(ValueError, match="lower-case"):
        register_norm("Group", norms.group_norm)
    with pytest.raises(ValueError, match="registered already"):
        register_norm("group", norms.group_norm)
    with pytest.raises(TypeError, match="module class or a factory"):
        register_norm("mine", 3)
    register_norm("mine", norms.layer_norm)
    assert "mine" in norm_names()
    register_norm("mine", norms.instance_norm, replace=True)  # The cache must not keep the old.
    layer = norms.resolve_norm("mine")(
        channels=4, train=False, name="n", dtype=None, param_dtype=jnp.float32
    )
    assert layer.group_size == 1


# ----------------------------------------------------------------------------- what each computes


class Normed(nn.Module):
    """One norm layer, named as in the blocks."""

    norm: str

    @nn.compact
    def __call__(self, x, *, train):
        return norms.apply_norm(
            self.norm, x, train=train, name="bn", dtype=jnp.float32, param_dtype=jnp.float32
        )


def oracle(x: np.ndarray, groups: int, epsilon: float = 1e-5) -> np.ndarray:
    """Wu and He (2018), eq. 1-3: per image, over (H, W) and C / G channels of each group."""
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + epsilon)).reshape(x.shape)


@pytest.mark.parametrize(
    "norm,groups", [("group(2)", 2), ("group(32)", 8), ("instance", 8), ("layer", 1)]
)
def test_group_instance_and_layer_norm_match_the_definition(norm, groups):
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 3, 8))) * 3 + 1
    module = Normed(norm)
    variables = module.init(jax.random.key(0), x, train=True)
    assert set(variables) == {"params"}  # No running statistics.
    chex.assert_trees_all_equal_shapes(
        variables["params"], {"bn": {"scale": np.ones(8), "bias": np.ones(8)}}
    )
    np.testing.assert_allclose(module.apply(variables, x, train=True), oracle(x, groups), atol=1e-5)


def test_batch_norm_keeps_todays_settings():
    layer = norms.resolve_norm("batch")(
        channels=4, train=True, name="bn", dtype=jnp.float32, param_dtype=jnp.float32
    )
    assert (layer.momentum, layer.epsilon, layer.use_running_average) == (0.9, 1e-5, False)
    tuned = norms.resolve_norm("batch(momentum=0.99)")(
        channels=4, train=False, name="bn", dtype=jnp.float32, param_dtype=jnp.float32
    )
    assert (tuned.momentum, tuned.use_running_average) == (0.99, True)


@pytest.mark.parametrize(
    "groups,channels,used", [(8, 64, 8), (8, 4, 4), (8, 1, 1), (32, 96, 32), (1, 7, 1)]
)
def test_group_count_is_min_groups_channels(groups, channels, used):
    assert norms.group_count(groups, channels) == used


def test_group_count_that_does_not_divide_names_the_channels():
    with pytest.raises(norms.NormError, match=r"group\(6\) cannot normalise .* 64 channels"):
        norms.group_count(6, 64)
    with pytest.raises(norms.NormError, match="positive integer"):
        norms.group_count(0, 64)


# The paper model's GSConvs normalise half their width: (6, 12) misfits in the bottleneck's
# (24 / 2). In the U-Net (8, 12, 16) only the second encoder stage misfits, which no single
# block check sees: the whole model is checked.
@pytest.mark.parametrize(
    "gsconv_in,features,bad", [("encoder,bottleneck,decoder", (6, 12), 12), ("", (8, 12, 16), 12)]
)
def test_a_group_count_that_misfits_a_width_is_a_config_error(gsconv_in, features, bad):
    config = test_config.get_config()
    config.model.gsconv_in = gsconv_in
    config.model.features = features
    config.data.image_size = 16
    config.model.norm = "group(8)"
    with pytest.raises(ValueError, match=rf"config\.model\.norm='group\(8\)'.* {bad} channels"):
        validate_config(config, device_count=1, process_count=1)


# ----------------------------------------------------------------------------- in the models


@pytest.mark.parametrize("model", sorted(MODELS))
def test_batch_norm_models_are_todays(model):
    unet = tiny(model, "batch")
    assert unet == UNet(features=(4,), **MODELS[model])  # "batch" is the default.
    shapes = jax.eval_shape(lambda: unet.init(jax.random.key(0), X, train=False))
    assert set(shapes) == {"params", "batch_stats"}
    stats = {p.rsplit("/", 1)[0] for p in leaf_paths(shapes["batch_stats"])}
    assert stats == {p.rsplit("/", 1)[0] for p in leaf_paths(shapes["params"]) if "bn/" in p}


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS[1:])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_norm_builds_and_runs_in_every_place(model, norm):
    unet = tiny(model, norm)
    unet.check_blocks()

    def run(x):
        variables = unet.init(jax.random.key(0), x, train=False)
        evaluated = unet.apply(variables, x, train=False)
        return variables, evaluated, unet.apply(variables, x, train=True, mutable=["batch_stats"])

    variables, evaluated, (trained, updates) = jax.jit(run)(X)
    chex.assert_shape([evaluated, trained], (2, 4, 4, 1))
    chex.assert_tree_all_finite([evaluated, trained])
    # No running statistics, so training and evaluation compute the same function.
    assert set(variables) == {"params"} and updates.get("batch_stats", {}) == {}
    np.testing.assert_array_equal(evaluated, trained)
    reference = leaf_paths(
        jax.eval_shape(lambda: tiny(model, "batch").init(jax.random.key(0), X, train=False))[
            "params"
        ]
    )
    norm_paths = {p for p in reference if "bn/" in p}
    assert norm_paths  # Every model here has norms in its blocks.
    paths = leaf_paths(variables["params"])
    if norm != "none":  # BatchNorm's parameter paths, whatever the norm.
        assert paths == reference
        return
    assert paths.isdisjoint(norm_paths)
    # Each convolution that BatchNorm followed has a bias instead.
    convs = {p.rsplit("/", 1)[0] for p in reference if p.endswith("conv/kernel")}
    followed = {p.rsplit("/", 1)[0].removesuffix("bn") + "conv" for p in norm_paths}
    assert followed & convs and {f"{c}/bias" for c in followed & convs} <= paths


def test_batch_is_the_default_and_its_model_is_todays():
    config = test_config.get_config()
    del config.model["norm"]  # A config from before the field existed.
    old = build_model(config.model)
    config.model.norm = "batch"
    assert build_model(config.model) == old and old.norm == "batch"


@pytest.mark.slow
def test_group_norm_nnx_unet_matches_linen():
    unet = tiny("paper", "group(2)", features=(4, 8))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = unet.init(jax.random.key(0), x, train=False)
    model = bts_nnx.UNet.from_linen(unet, variables)
    chex.assert_trees_all_close(model(x, train=False), unet.apply(variables, x, train=False))


# ----------------------------------------------------------------------------- a user's norm


@pytest.mark.parametrize(
    "spec,scale",
    [("tests.user_blocks:RMSNorm", 1.0), ("tests.user_blocks:scaled_group_norm(2, gain=0.5)", 0.5)],
)
@pytest.mark.slow
def test_a_users_norm_by_import_path(spec, scale):
    config = test_config.get_config()
    config.model.features = (4,)
    config.data.image_size = 4
    config.model.norm = spec
    validate_config(config, device_count=1, process_count=1)
    unet = build_model(config.model)
    variables = jax.jit(lambda x: unet.init(jax.random.key(0), x, train=False))(X)
    assert set(variables) == {"params"}
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    scales = [leaf for path, leaf in flat if "/".join(k.key for k in path).endswith("bn/scale")]
    assert len(scales) == 3 * 2 * 2  # 3 stages of 2 GSConvs of 2 norms (the paper model).
    chex.assert_trees_all_equal(scales, [np.full(s.shape, scale, np.float32) for s in scales])
    chex.assert_tree_all_finite(jax.jit(lambda v, x: unet.apply(v, x, train=True))(variables, X))


def test_a_users_norm_with_wrong_arguments_names_the_setting():
    spec = "tests.user_blocks:RMSNorm(gamma=1)"
    with pytest.raises(ValueError, match="unexpected keyword argument 'gamma'") as error:
        norms.resolve_norm(spec)
    assert f"config.model.norm={spec!r}" in str(error.value)
