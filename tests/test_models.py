"""Model tests: exact blocks against independent references, shapes, counts and invariants."""

import importlib
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax.models import (
    ECA,
    GSConv,
    UNet,
    build_model,
    channel_shuffle,
    count_params,
    eca_kernel_size,
    model_summary,
)
from bts_jax.models.layers import block_diagonal_conv, resolve_depthwise_impl

TINY = (4, 8, 16, 32)
CONFIG_NAMES = ["default", "unet_baseline", "ablation_eca_only", "ablation_gsconv_only", "test"]
PAPER_PLACES = ("bottleneck", "decoder", "encoder")


def load_config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def init(model, shape, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape)
    return jax.jit(lambda x: model.init(jax.random.key(seed + 1), x, train=False))(x), x


def apply(model, variables, x, train=False):
    """Jitted apply: eager Flax dispatches op by op, which is slow on CPU."""
    if train:
        fn = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    else:
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return fn(variables, x)


def randomize_batch_stats(variables, seed=0):
    """Gives BatchNorm non-trivial running statistics so eval-mode tests see them."""
    stats = variables["batch_stats"]
    leaves, treedef = jax.tree_util.tree_flatten(stats)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        if i % 2  # tree leaves alternate mean, var per BatchNorm (sorted keys)
        else 0.3 * jax.random.normal(k, leaf.shape)
        for i, (k, leaf) in enumerate(zip(keys, leaves, strict=True))
    ]
    return {**variables, "batch_stats": jax.tree_util.tree_unflatten(treedef, new)}


# ----------------------------------------------------------------------------- channel_shuffle


@pytest.mark.parametrize("channels", [2, 4, 8, 16, 24, 64])
def test_channel_shuffle_matches_spec_formulas(channels):
    x = np.arange(channels, dtype=np.float32)[None, None, :] + np.zeros((3, 2, 1), np.float32)
    half = channels // 2
    interleave = [(o % 2) * half + o // 2 for o in range(channels)]
    legacy = [2 * (o % half) + o // half for o in range(channels)]
    np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), "interleave"), x[..., interleave])
    np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), "legacy"), x[..., legacy])
    np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), "none"), x)


def test_channel_shuffle_examples_from_spec():
    x = jnp.arange(8.0)
    np.testing.assert_array_equal(channel_shuffle(x, "interleave"), [0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_array_equal(channel_shuffle(x, "legacy"), [0, 2, 4, 6, 1, 3, 5, 7])


@pytest.mark.parametrize("channels", [2, 6, 8, 32])
def test_interleave_and_legacy_are_inverse_permutations(channels):
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, channels))
    chex.assert_trees_all_equal(channel_shuffle(channel_shuffle(x, "interleave"), "legacy"), x)
    chex.assert_trees_all_equal(channel_shuffle(channel_shuffle(x, "legacy"), "interleave"), x)
    if channels > 2:  # For C = 2 both are the identity.
        assert not np.array_equal(channel_shuffle(x, "interleave"), x)


def test_channel_shuffle_errors():
    with pytest.raises(ValueError, match="even"):
        channel_shuffle(jnp.zeros((1, 5)), "interleave")
    with pytest.raises(ValueError, match="shuffle mode 'random'"):
        channel_shuffle(jnp.zeros((1, 4)), "random")


# ----------------------------------------------------------------------------- GSConv


def _conv(x, kernel, stride=1, groups=1):
    # Explicit k // 2 on both sides, as torch.nn.Conv2d(padding=k // 2) in the authors' GSConv;
    # not "SAME", which pads (0, 1) at stride 2 on even sizes.
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )


def _bn_eval(x, params, stats, eps=1e-5):
    return (x - stats["mean"]) / jnp.sqrt(stats["var"] + eps) * params["scale"] + params["bias"]


def _bn_train(x, params, eps=1e-5):
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + eps) * params["scale"] + params["bias"]


def _gsconv_reference(x, variables, *, stride, act, shuffle, train):
    p, s = variables["params"], variables["batch_stats"]
    activation = {
        "mish": lambda v: v * jnp.tanh(jnp.log1p(jnp.exp(v))),
        "relu": jax.nn.relu,
        "silu": lambda v: v / (1 + jnp.exp(-v)),
    }[act]

    def bn(y, name):
        return _bn_train(y, p[name]["bn"]) if train else _bn_eval(y, p[name]["bn"], s[name]["bn"])

    x1 = activation(bn(_conv(x, p["dense"]["conv"]["kernel"], stride), "dense"))
    half = x1.shape[-1]
    x2 = activation(bn(_conv(x1, p["depthwise"]["conv"]["kernel"], groups=half), "depthwise"))
    y = np.asarray(jnp.concatenate([x1, x2], axis=-1))
    channels = 2 * half
    if shuffle == "interleave":
        order = [(o % 2) * half + o // 2 for o in range(channels)]
    elif shuffle == "legacy":
        order = [2 * (o % half) + o // half for o in range(channels)]
    else:
        order = list(range(channels))
    return y[..., order]


@pytest.mark.parametrize(
    "features,stride,act,shuffle,train,size",
    [
        (8, 1, "mish", "interleave", False, 8),
        (8, 2, "mish", "legacy", False, 8),
        (8, 2, "mish", "interleave", False, 9),
        (8, 2, "silu", "interleave", True, 32),
        (12, 1, "silu", "none", False, 8),
        (6, 1, "relu", "interleave", True, 8),
    ],
)
def test_gsconv_equals_lax_reference(features, stride, act, shuffle, train, size):
    module = GSConv(features, strides=stride, act=act, shuffle=shuffle)
    variables, x = init(module, (2, size, size, 5))
    variables = randomize_batch_stats(variables)
    # Perturb BatchNorm scale/bias away from (1, 0) so they matter.
    variables = {
        **variables,
        "params": jax.tree_util.tree_map_with_path(
            lambda path, v: (
                v + 0.1 * jnp.arange(v.size).reshape(v.shape) / v.size
                if path[-1].key in ("scale", "bias")
                else v
            ),
            variables["params"],
        ),
    }
    assert variables["params"]["depthwise"]["conv"]["kernel"].shape == (5, 5, 1, features // 2)
    if train:
        out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
        out = module.apply(variables, x, train=False)
    expected = _gsconv_reference(x, variables, stride=stride, act=act, shuffle=shuffle, train=train)
    out_size = (size - 1) // stride + 1
    chex.assert_shape(out, (2, out_size, out_size, features))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- depthwise impls


@pytest.mark.parametrize("groups,c_in,c_out", [(1, 3, 4), (2, 4, 6), (4, 8, 8)])
def test_block_diagonal_conv_passes_other_convolutions_through_unchanged(groups, c_in, c_out):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, c_in))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, c_in // groups, c_out))
    args = (x, kernel, (1, 1), ((1, 1), (1, 1)))
    kwargs = dict(feature_group_count=groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(
        block_diagonal_conv(*args, **kwargs), jax.lax.conv_general_dilated(*args, **kwargs)
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_block_diagonal_conv_equals_the_grouped_depthwise_convolution(stride):
    x = jax.random.normal(jax.random.key(0), (2, 11, 11, 6))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, 1, 6))
    kwargs = dict(
        feature_group_count=6,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    args = ((stride, stride), ((2, 2), (2, 2)))

    def grouped(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, *args, **kwargs)

    def dense(x, kernel):
        return block_diagonal_conv(x, kernel, *args, **kwargs)

    np.testing.assert_allclose(dense(x, kernel), grouped(x, kernel), rtol=1e-5, atol=1e-5)
    # The gradient reaches only the depthwise kernel's entries, with the grouped values.
    cotangent = jax.random.normal(jax.random.key(2), grouped(x, kernel).shape)
    grads = [jax.vjp(f, x, kernel)[1](cotangent) for f in (dense, grouped)]
    for dense_grad, grouped_grad in zip(*grads, strict=True):
        chex.assert_equal_shape([dense_grad, grouped_grad])
        np.testing.assert_allclose(dense_grad, grouped_grad, rtol=1e-4, atol=1e-4)


def test_resolve_depthwise_impl_picks_shifted_on_cpu_only():
    assert resolve_depthwise_impl("auto", "cpu") == "shifted"
    assert resolve_depthwise_impl("auto", "gpu") == "grouped"
    assert resolve_depthwise_impl("auto", "tpu") == "grouped"
    assert resolve_depthwise_impl("grouped", "cpu") == "grouped"
    assert resolve_depthwise_impl("dense", "gpu") == "dense"
    assert resolve_depthwise_impl("shifted", "gpu") == "shifted"
    assert resolve_depthwise_impl("auto") == "shifted"  # The tests run on CPU.
    with pytest.raises(ValueError, match="depthwise_impl='winograd'"):
        resolve_depthwise_impl("winograd")


def _max_feature_groups(fn, *args):
    """The largest ``feature_group_count`` of any convolution in ``fn``'s jaxpr (1 if none)."""
    text = str(jax.make_jaxpr(fn)(*args))
    return max([1, *(int(n) for n in re.findall(r"feature_group_count=(\d+)", text))])


@pytest.mark.parametrize("impl,groups", [("grouped", 4), ("dense", 1), ("auto", 1)])
def test_gsconv_depthwise_impl_decides_the_convolution_actually_traced(impl, groups):
    module = GSConv(8, depthwise_impl=impl)
    variables, x = init(module, (2, 8, 8, 3))
    traced = _max_feature_groups(lambda v, x: module.apply(v, x, train=False), variables, x)
    assert traced == groups  # "auto" is "shifted" (no grouped convolution) on the tests' CPU


@pytest.mark.slow
def test_unet_depthwise_impls_share_parameters_and_agree_in_outputs_and_gradients():
    # Two stages: GSConv's depthwise half in encoder, bottleneck and decoder, compiled quicker.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    mask = (jax.random.uniform(jax.random.key(1), x.shape) > 0.7).astype(jnp.float32)
    outputs = {}
    for impl in ("grouped", "dense"):
        model = UNet((4, 8), gsconv_in=PAPER_PLACES, eca_in=PAPER_PLACES, depthwise_impl=impl)
        variables, _ = init(model, x.shape)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean((jax.nn.sigmoid(logits) - mask) ** 2), logits

        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
            variables["params"]
        )
        outputs[impl] = variables, logits, grads
    (variables_g, logits_g, grads_g), (variables_d, logits_d, grads_d) = outputs.values()
    # Same parameter tree and the same initial values: checkpoints work with either.
    chex.assert_trees_all_equal(variables_g, variables_d)
    np.testing.assert_allclose(logits_d, logits_g, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(grads_d, grads_g, rtol=1e-3, atol=1e-5)


def test_gsconv_rejects_odd_features_and_unknown_settings():
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="even number of features, got 7"):
        GSConv(7).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="shuffle 'zigzag'"):
        GSConv(8, shuffle="zigzag").init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        GSConv(8, act="gelu").init(jax.random.key(0), x, train=False)


def test_gsconv_has_fewer_weights_than_plain_conv():
    for c_in, c_out in [(64, 64), (128, 256), (512, 1024)]:
        module = GSConv(c_out)
        x = jnp.zeros((1, 8, 8, c_in))
        params = jax.eval_shape(lambda m=module, x=x: m.init(jax.random.key(0), x, train=False))
        gs_weights = count_params(params["params"])
        plain = 3 * 3 * c_in * c_out + 2 * c_out  # conv + BatchNorm scale/bias
        assert gs_weights < 0.6 * plain, (c_in, c_out, gs_weights, plain)


# ----------------------------------------------------------------------------- ECA


def test_eca_kernel_size_rule_for_all_channel_counts():
    for channels in range(1, 2049):
        t = int(abs((math.log2(channels) + 1) / 2))
        expected = t if t % 2 == 1 else t + 1
        k = eca_kernel_size(channels)
        assert k == expected, channels
        assert k % 2 == 1
    assert [eca_kernel_size(c) for c in (64, 128, 256, 512, 1024)] == [3, 5, 5, 5, 5]


def _eca_reference(x, kernel):
    x = np.asarray(x, np.float64)
    k = len(kernel)
    pooled = x.mean(axis=(1, 2))  # (B, C)
    padded = np.pad(pooled, ((0, 0), ((k - 1) // 2, (k - 1) // 2)))
    conv = np.stack([np.correlate(row, kernel, mode="valid") for row in padded])
    weights = 1.0 / (1.0 + np.exp(-conv))
    return x * weights[:, None, None, :]


@pytest.mark.parametrize("channels,kernel_size", [(16, None), (64, None), (128, None), (10, 7)])
def test_eca_equals_numpy_reference(channels, kernel_size):
    module = ECA(kernel_size)
    x = jax.random.normal(jax.random.key(3), (3, 5, 4, channels)) + 0.5
    variables = module.init(jax.random.key(4), x)
    kernel = np.asarray(variables["params"]["conv"]["kernel"])[:, 0, 0]
    assert len(kernel) == (kernel_size or eca_kernel_size(channels))
    np.testing.assert_allclose(module.apply(variables, x), _eca_reference(x, kernel), rtol=1e-5)


def test_eca_on_equal_channels_scales_them_equally_away_from_the_zero_padded_edges():
    channels, k = 32, 5
    module = ECA(k)
    x = jnp.broadcast_to(
        jax.random.normal(jax.random.key(0), (2, 6, 6, 1)) + 1.0, (2, 6, 6, channels)
    )
    variables = module.init(jax.random.key(1), x)
    scale = module.apply(variables, x) / x
    pad = (k - 1) // 2
    interior = scale[..., pad : channels - pad]
    # Every interior channel sees the same k pooled values, so gets the same weight.
    np.testing.assert_allclose(
        interior, jnp.broadcast_to(interior[..., :1], interior.shape), rtol=1e-6
    )
    # The edge channels see zero padding (ECA-Net's choice), so their weights follow the reference.
    kernel = np.asarray(variables["params"]["conv"]["kernel"])[:, 0, 0]
    np.testing.assert_allclose(module.apply(variables, x), _eca_reference(x, kernel), rtol=1e-5)
    # With k = 1 there is no padding, and all channels are scaled equally.
    module1 = ECA(1)
    v1 = module1.init(jax.random.key(2), x)
    scale1 = module1.apply(v1, x) / x
    np.testing.assert_allclose(scale1, jnp.broadcast_to(scale1[..., :1], scale1.shape), rtol=1e-6)


def test_eca_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        ECA(4).init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


# ----------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("height,width", [(32, 32), (48, 64), (16, 80)])
def test_unet_output_shapes_for_every_config(name, height, width):
    config = load_config(name)
    config.model.features = TINY
    model = build_model(config.model)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, height, width, 1)), train=False)
    )
    out = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((2, height, width, 1)), train=False), variables
    )
    chex.assert_shape(out, (2, height, width, 1))


def test_configs_set_the_documented_switches():
    def places(name, field):
        return build_model(load_config(name).model).__getattribute__(field)

    assert places("default", "gsconv_in") == PAPER_PLACES
    assert places("default", "eca_in") == PAPER_PLACES
    assert places("unet_baseline", "gsconv_in") == places("unet_baseline", "eca_in") == ()
    assert places("ablation_eca_only", "gsconv_in") == ()
    assert places("ablation_eca_only", "eca_in") == PAPER_PLACES
    assert places("ablation_gsconv_only", "gsconv_in") == PAPER_PLACES
    assert places("ablation_gsconv_only", "eca_in") == ()
    assert UNet().gsconv_in == () and UNet().eca_in == ()  # UNet defaults are the baseline.


@pytest.mark.slow
@pytest.mark.parametrize("num_classes,upsample", [(3, "bilinear"), (1, "transpose")])
def test_unet_multiclass_and_bilinear_with_skip_eca(num_classes, upsample):
    model = UNet(TINY, num_classes, upsample, gsconv_in=("decoder",), eca_in=("skip", "encoder"))
    variables, x = init(model, (2, 32, 32, 1))
    chex.assert_shape(apply(model, variables, x), (2, 32, 32, num_classes))
    assert {f"skip_eca_{i}" for i in range(4)} <= set(variables["params"])


@pytest.mark.parametrize("size", [(30, 32), (32, 40), (8, 8)])
def test_unet_rejects_sizes_that_are_not_multiples_of_16(size):
    model = UNet(TINY)
    with pytest.raises(ValueError, match=r"multiples of 16 .* got {}x{}".format(*size)):
        model.init(jax.random.key(0), jnp.zeros((1, *size, 1)), train=False)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("upsample", "nearest", "config.model.upsample"),
        ("gsconv_shuffle", "zigzag", "gsconv_shuffle"),
        ("gsconv_act", "gelu", "activation 'gelu'"),
        ("gsconv_in", "encoder,skip", "config.model.gsconv_in has unknown entries \\['skip'\\]"),
        ("eca_in", "middle", "config.model.eca_in has unknown entries \\['middle'\\]"),
        ("features", (4, 8, 16, 31), "odd widths \\[31\\]"),
        ("name", "segformer", "config.model.name"),
        ("depthwise_impl", "fft", "config.model.depthwise_impl='fft'"),
    ],
)
def test_build_model_rejects_bad_values_naming_the_setting(field, value, message):
    config = load_config("test")
    config.model[field] = value
    with pytest.raises(ValueError, match=message):
        build_model(config.model)


def test_build_model_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="config.dtype='float16'"):
        build_model(load_config("test").model, dtype="float16")


@pytest.mark.slow
def test_baseline_odd_widths_are_fine_without_gsconv():
    model = UNet((3, 6, 12, 24))  # odd bottleneck? 48 - even; 3 is odd but no GSConv.
    variables, x = init(model, (1, 16, 16, 1))
    chex.assert_shape(apply(model, variables, x), (1, 16, 16, 1))


def _expected_param_count(features, *, gsconv, eca, in_channels=1, num_classes=1, bilinear=False):
    """Counts parameters from the layout of docs/design.md section 2, independently of Flax."""

    def conv_bn(c_in, c_out, k=3, groups=1):
        return k * k * (c_in // groups) * c_out + 2 * c_out

    def gs(c_in, c_out):
        half = c_out // 2
        return conv_bn(c_in, half) + conv_bn(half, half, k=5, groups=half)

    def block(c_in, c_out, place):
        conv = gs if place in gsconv else conv_bn
        return (
            conv(c_in, c_out) + conv(c_out, c_out) + (eca_kernel_size(c_out) if place in eca else 0)
        )

    total, c_in = 0, in_channels
    for f in features:
        total += block(c_in, f, "encoder")
        c_in = f
    total += block(c_in, 2 * c_in, "bottleneck")
    c_in *= 2
    for f in reversed(features):
        total += (c_in * f + f) if bilinear else (4 * c_in * f + f)
        total += block(2 * f, f, "decoder")
        c_in = f
    return total + c_in * num_classes + num_classes


def _param_count(model):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
    )
    return count_params(variables["params"])


@pytest.mark.slow
def test_exact_parameter_counts_at_default_widths():
    baseline = build_model(load_config("unet_baseline").model)
    paper = build_model(load_config("default").model)
    assert _param_count(baseline) == 31_036_481
    assert _param_count(paper) == 16_990_922
    places = set(PAPER_PLACES)
    features = (64, 128, 256, 512)
    assert _param_count(paper) == _expected_param_count(features, gsconv=places, eca=places)
    for gsconv, eca, bilinear in [((), ("skip",), True), (("decoder",), ("encoder",), False)]:
        model = UNet(features, 1, "bilinear" if bilinear else "transpose", gsconv, eca)
        expected = _expected_param_count(features, gsconv=gsconv, eca=eca, bilinear=bilinear)
        # Skip-ECA adds one kernel per skip tensor on top of the formula above.
        expected += sum(eca_kernel_size(f) for f in features) if "skip" in eca else 0
        assert _param_count(model) == expected


@pytest.mark.slow
def test_model_summary_counts_params_and_flops():
    small = model_summary(UNet(TINY), 64)
    assert small["params"] == _expected_param_count(TINY, gsconv=(), eca=())
    paper = model_summary(UNet(TINY, gsconv_in=PAPER_PLACES, eca_in=PAPER_PLACES), 64)
    # GSConv roughly halves the convolution work.
    assert 0.3 * small["flops"] < paper["flops"] < 0.8 * small["flops"]
    # FLOPs scale with the number of pixels.
    big = model_summary(UNet(TINY), 128)
    assert big["flops"] == pytest.approx(4 * small["flops"], rel=0.05)


# ----------------------------------------------------------------------------- invariants


@pytest.fixture(scope="module")
def paper_tiny():
    model = UNet(TINY, gsconv_in=PAPER_PLACES, eca_in=PAPER_PLACES)
    variables, x = init(model, (4, 32, 32, 1))
    return model, randomize_batch_stats(variables), x


@pytest.mark.slow
def test_jit_and_eager_agree(paper_tiny):
    model, variables, x = paper_tiny
    eager = model.apply(variables, x, train=False)
    jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_eval_output_of_a_sample_does_not_depend_on_the_batch(paper_tiny):
    model, variables, x = paper_tiny
    batch_out = apply(model, variables, x)
    for i in range(x.shape[0]):
        alone = apply(model, variables, x[i : i + 1])
        chex.assert_trees_all_close(alone[0], batch_out[i], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_mode_depends_on_the_batch_and_updates_batch_stats(paper_tiny):
    model, variables, x = paper_tiny
    out, updates = apply(model, variables, x, train=True)
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    alone, _ = apply(model, variables, x[:1], train=True)
    assert not np.allclose(alone[0], out[0], atol=1e-3)


@pytest.mark.slow
def test_bfloat16_forward_stays_close_to_float32(paper_tiny):
    _, variables, x = paper_tiny
    f32 = UNet(TINY, gsconv_in=PAPER_PLACES, eca_in=PAPER_PLACES)
    bf16 = f32.clone(dtype=jnp.bfloat16)
    out32 = apply(f32, variables, x)
    out16 = apply(bf16, variables, x)
    assert out16.dtype == jnp.bfloat16
    error = jnp.abs(out16.astype(jnp.float32) - out32)
    assert float(error.max()) < 0.05 * float(jnp.abs(out32).max()) + 0.05
    # Parameters and batch statistics stay float32 under a bfloat16 model.
    v16 = jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, train=False))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(v16)} == {jnp.dtype(jnp.float32)}
