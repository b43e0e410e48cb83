"""The block zoo against independent references, and invariants of every registered block.

SE, ECA and CBAM against timm's PyTorch modules and scSE against segmentation_models_pytorch's
(golden files from ``tools/make_attention_golden.py``, no PyTorch needed here); coordinate
attention, the ghost module and the depthwise-separable convolution against NumPy written from
the papers' equations; shapes, dtypes and finite gradients of every registered name.
"""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from bts_jax.models import (
    CBAM,
    ECA,
    SCSE,
    CoordinateAttention,
    DepthwiseSeparableConv,
    GhostConv,
    SqueezeExcite,
    UNet,
    attention_names,
    conv_names,
    count_params,
    registry,
)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "attention_golden.npz")
EPS = 1e-5


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def _dense(weight):
    """PyTorch 1x1 conv weight (O, I, 1, 1) -> Flax Dense kernel (I, O)."""
    return weight[:, :, 0, 0].T


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _run_golden(golden, case, module, params, stats=None, train=False):
    x = jnp.asarray(_nhwc(golden[f"{case}/input"]))
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    kwargs = {"train": train} if stats else {}
    out = _apply(module, variables, x, **kwargs)
    # Shapes first: a missing or extra parameter is an error, not a silent default.
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), x, **kwargs))
    chex.assert_trees_all_equal_shapes(abstract["params"], params)
    return np.asarray(out), _nhwc(golden[f"{case}/output{'_train' if train else ''}"])


@pytest.mark.parametrize("case,reduction", [("se_c32_r16", 16), ("se_c64_r4", 4)])
def test_se_equals_timm(golden, case, reduction):
    s = {k.split("/state/")[1]: v for k, v in golden.items() if k.startswith(f"{case}/state/")}
    params = {
        "reduce": {"kernel": _dense(s["fc1.weight"]), "bias": s["fc1.bias"]},
        "expand": {"kernel": _dense(s["fc2.weight"]), "bias": s["fc2.bias"]},
    }
    out, expected = _run_golden(golden, case, SqueezeExcite(reduction), params)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["eca_c64", "eca_c128"])
def test_eca_equals_timm(golden, case):
    weight = golden[f"{case}/state/conv.weight"]  # (1, 1, k)
    params = {"conv": {"kernel": weight[0, 0, :, None, None]}}
    out, expected = _run_golden(golden, case, ECA(), params)  # k from the channel count
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_cbam_equals_timm(golden, train):
    case = "cbam_c32_r16"
    s = {k.split("/state/")[1]: v for k, v in golden.items() if k.startswith(f"{case}/state/")}
    params = {
        "reduce": {"kernel": _dense(s["channel.fc1.weight"])},
        "expand": {"kernel": _dense(s["channel.fc2.weight"])},
        "spatial_conv": {"kernel": np.transpose(s["spatial.conv.conv.weight"], (2, 3, 1, 0))},
        "spatial_bn": {"scale": s["spatial.conv.bn.weight"], "bias": s["spatial.conv.bn.bias"]},
    }
    stats = {
        "spatial_bn": {
            "mean": s["spatial.conv.bn.running_mean"],
            "var": s["spatial.conv.bn.running_var"],
        }
    }
    out, expected = _run_golden(golden, case, CBAM(16), params, stats, train=train)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_scse_equals_segmentation_models_pytorch(golden):
    case = "scse_c64_r4"
    s = {k.split("/state/")[1]: v for k, v in golden.items() if k.startswith(f"{case}/state/")}
    params = {
        "channel": {
            "reduce": {"kernel": _dense(s["cSE.1.weight"]), "bias": s["cSE.1.bias"]},
            "expand": {"kernel": _dense(s["cSE.3.weight"]), "bias": s["cSE.3.bias"]},
        },
        "spatial": {
            "kernel": np.transpose(s["sSE.0.weight"], (2, 3, 1, 0)),
            "bias": s["sSE.0.bias"],
        },
    }
    out, expected = _run_golden(golden, case, SCSE(4), params)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- NumPy references


def _apply(module, variables, x, **kwargs):
    """Jitted apply (eager Flax dispatches op by op, slowly on CPU); train mode drops updates."""
    if kwargs.get("train"):
        return jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"], **kwargs)[0])(
            variables, x
        )
    return jax.jit(lambda v, x: module.apply(v, x, **kwargs))(variables, x)


def _random_variables(module, x, seed=0, **kwargs):
    """Every parameter and BatchNorm statistic drawn far from its default (NumPy, no XLA)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(seed), x, **kwargs))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.5 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _bn(y, scale, bias, mean=None, var=None):
    """BatchNorm over every axis but the last: running statistics if given, else the batch's."""
    axes = tuple(range(y.ndim - 1))
    if mean is None:
        mean, var = y.mean(axis=axes), y.var(axis=axes)
    return (y - mean) / np.sqrt(var + EPS) * scale + bias


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _coord_reference(x, p, s, train):
    """Hou et al. 2021, eqs. 4-9: directional pooling, shared 1x1 + BN + h-swish, two gates."""
    x = np.asarray(x, np.float64)
    height = x.shape[1]
    z = np.concatenate([x.mean(axis=2), x.mean(axis=1)], axis=1)  # (B, H + W, C)
    f = z @ p["reduce"]["kernel"] + p["reduce"]["bias"]
    stats = () if train else (s["bn"]["mean"], s["bn"]["var"])
    f = _bn(f, p["bn"]["scale"], p["bn"]["bias"], *stats)
    f = f * np.clip(f + 3.0, 0.0, 6.0) / 6.0
    g_h = _sigmoid(f[:, :height] @ p["attend_h"]["kernel"] + p["attend_h"]["bias"])
    g_w = _sigmoid(f[:, height:] @ p["attend_w"]["kernel"] + p["attend_w"]["bias"])
    return x * g_h[:, :, None, :] * g_w[:, None, :, :]


@pytest.mark.parametrize("channels,shape,train", [(16, (2, 5, 7), False), (40, (3, 6, 4), True)])
def test_coordinate_attention_equals_numpy_reference(channels, shape, train):
    x = jax.random.normal(jax.random.key(0), (shape[0], shape[1], shape[2], channels))
    module = CoordinateAttention()
    variables = _random_variables(module, x, train=False)
    p = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), variables["params"])
    assert p["reduce"]["kernel"].shape == (channels, max(8, channels // 32))
    s = jax.tree_util.tree_map(np.asarray, variables["batch_stats"])
    out = _apply(module, variables, x, train=train)
    np.testing.assert_allclose(out, _coord_reference(x, p, s, train), rtol=1e-5, atol=1e-6)


def _conv_np(x, kernel, stride=1, groups=1):
    """Cross-correlation with k // 2 zero padding on every side; kernel (k, k, C_in / g, C_out)."""
    k = kernel.shape[0]
    x = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    windows = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # B,H,W,C,k,k
    c_in, c_out = x.shape[-1] // groups, kernel.shape[-1] // groups
    outs = [
        np.einsum(
            "bhwcij,ijco->bhwo",
            windows[..., g * c_in : (g + 1) * c_in, :, :],
            kernel[..., g * c_out : (g + 1) * c_out],
        )
        for g in range(groups)
    ]
    return np.concatenate(outs, axis=-1)


def _conv_bn_relu(x, p, s, stride=1, groups=1):
    y = _conv_np(x, p["conv"]["kernel"], stride, groups)
    return np.maximum(_bn(y, p["bn"]["scale"], p["bn"]["bias"], s["bn"]["mean"], s["bn"]["var"]), 0)


def _ghost_reference(x, p, s, features, stride):
    """Han et al. 2020, eqs. 2-3: m = ceil(n / 2) intrinsic maps, one cheap 3x3 map from each."""
    intrinsic = _conv_bn_relu(x, p["primary"], s["primary"], stride)
    ghosts = _conv_bn_relu(intrinsic, p["cheap"], s["cheap"], groups=intrinsic.shape[-1])
    return np.concatenate([intrinsic, ghosts], axis=-1)[..., :features]


def _dsconv_reference(x, p, s, stride):
    """Howard et al. 2017: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU."""
    y = _conv_bn_relu(x, p["depthwise"], s["depthwise"], stride, groups=x.shape[-1])
    return _conv_bn_relu(y, p["pointwise"], s["pointwise"])


@pytest.mark.parametrize("kind", ["ghost", "dsconv"])
@pytest.mark.parametrize("features,stride,size", [(5, 1, (7, 6)), (8, 2, (9, 7))])
def test_ghost_and_dsconv_equal_numpy_references(kind, features, stride, size):
    x = jax.random.normal(jax.random.key(2), (2, *size, 3))
    module = (GhostConv if kind == "ghost" else DepthwiseSeparableConv)(features, strides=stride)
    variables = _random_variables(module, x, train=False)
    p, s = (jax.tree_util.tree_map(np.asarray, variables[c]) for c in ("params", "batch_stats"))
    out = _apply(module, variables, x, train=False)
    x = np.asarray(x, np.float64)
    if kind == "ghost":
        assert p["primary"]["conv"]["kernel"].shape == (3, 3, 3, (features + 1) // 2)
        expected = _ghost_reference(x, p, s, features, stride)
    else:
        expected = _dsconv_reference(x, p, s, stride)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- every name


class _Host(nn.Module):
    """One registered block under the name ``block``."""

    kind: str
    block_name: str
    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
        factory = registry.resolve(self.kind, self.block_name, "test")
        common = dict(name="block", dtype=self.dtype, param_dtype=jnp.float32)
        common["options"] = registry.BlockOptions()
        if self.kind == "conv":
            common["strides"] = self.strides
        return registry.call_block(factory(self.features, **common), x, train)


def _forward_and_grads(module, x):
    variables = jax.jit(lambda x: module.init(jax.random.key(0), x, train=False))(x)

    @jax.jit
    def run(params, x):
        def loss(params, x):
            out, _ = module.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(out.astype(jnp.float32) ** 2), out

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return out, grads

    out, grads = run(variables.get("params", {}), x)
    return variables, out, grads


@pytest.mark.parametrize("name", attention_names())
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_attention_keeps_shape_and_dtype_with_finite_gradients(name, dtype):
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 6), dtype)  # odd sizes
    variables, out, grads = _forward_and_grads(_Host("attention", name, 6, dtype=dtype), x)
    chex.assert_shape(out, x.shape)
    chex.assert_type(out, dtype)
    chex.assert_tree_all_finite(grads)
    param_dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert param_dtypes <= {jnp.dtype(jnp.float32)}


# (stride, dtype): odd sizes throughout; stride 2 with bfloat16 and stride 1 with float32.
@pytest.mark.parametrize("name", conv_names())
@pytest.mark.parametrize("stride,dtype", [(1, jnp.float32), (2, jnp.bfloat16)])
def test_every_conv_maps_to_the_documented_shape_with_finite_gradients(name, stride, dtype):
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 5), dtype)
    variables, out, grads = _forward_and_grads(_Host("conv", name, 6, stride, dtype), x)
    chex.assert_shape(out, (2, -(-7 // stride), -(-9 // stride), 6))
    chex.assert_type(out, dtype)
    chex.assert_tree_all_finite(grads)
    param_dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert param_dtypes <= {jnp.dtype(jnp.float32)}


def _block_params(kind, name, c_in, features):
    x = jnp.zeros((1, 8, 8, c_in))
    host = _Host(kind, name, features)
    variables = jax.eval_shape(lambda: host.init(jax.random.key(0), x, train=False))
    return count_params(variables.get("params", {}))


def test_parameter_counts_follow_the_documented_formulas():
    c, h = 64, 8  # SE-type MLPs at ratio 16 use max(64 // 16, 8) = 8 hidden units
    assert _block_params("attention", "none", c, c) == 0
    assert _block_params("attention", "eca", c, c) == 3
    assert _block_params("attention", "se", c, c) == 2 * c * h + h + c
    assert _block_params("attention", "cbam", c, c) == 2 * c * h + 7 * 7 * 2 + 2
    assert _block_params("attention", "coord", c, c) == (c * 8 + 8) + 2 * 8 + 2 * (8 * c + c)
    assert _block_params("attention", "scse", c, c) == 2 * c * h + h + c + c + 1
    c_in, f = 16, 32
    assert _block_params("conv", "double_conv", c_in, f) == 9 * c_in * f + 2 * f
    assert _block_params("conv", "dsconv", c_in, f) == 9 * c_in + 2 * c_in + c_in * f + 2 * f
    m = f // 2
    assert _block_params("conv", "ghost", c_in, f) == 9 * c_in * m + 2 * m + 9 * m + 2 * m
    assert _block_params("conv", "gsconv", c_in, f) == 9 * c_in * m + 2 * m + 25 * m + 2 * m


# Two U-Nets whose groups use every registered name between them: one compiled train step each.
UNET_MIXES = [
    dict(
        conv="encoder:dsconv,bottleneck:ghost,decoder:gsconv",
        attention="encoder:se,bottleneck:cbam,decoder:coord,skip:scse",
    ),
    dict(conv="encoder:double_conv", attention="eca,decoder:none,skip:eca"),
]


def test_the_unet_mixes_cover_every_registered_name():
    covered = {"conv": set(), "attention": set()}
    for mix in UNET_MIXES:
        blocks = UNet((4,), **mix)._check_fields()
        for kind in covered:
            covered[kind] |= set(blocks[kind].values())
    assert covered["conv"] == set(conv_names())
    assert covered["attention"] == set(attention_names())


@pytest.mark.slow
@pytest.mark.parametrize("mix", range(len(UNET_MIXES)))
def test_a_unet_train_step_with_every_block_is_finite(mix):
    model = UNet((4,), **UNET_MIXES[mix])  # one stage: every group, a small program
    model.check_blocks()
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 1))
    target = (x > 0.5).astype(jnp.float32)
    variables = _random_variables(model, x, train=False)  # no compiled init

    @jax.jit
    def step(params, batch_stats):
        def loss(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return optax_free_bce(logits, target), updates

        (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        return value, params, updates["batch_stats"]

    value, params, batch_stats = step(variables["params"], variables["batch_stats"])
    value2, _, _ = step(params, batch_stats)
    chex.assert_tree_all_finite((value, params, batch_stats, value2))
    assert float(value2) < float(value)  # One gradient step on one batch lowers its loss.


def optax_free_bce(logits, target):
    """Mean binary cross-entropy of logits (B, H, W, 1)."""
    logits = logits.astype(jnp.float32)
    return jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-abs(logits))))
