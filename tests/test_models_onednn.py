"""oneDNN's convolutions (``config.model.conv_impl``, bts_jax/models/onednn) against XLA's.

The oracle is ``lax.conv_general_dilated`` and its gradients (``jax.vjp``) on the same inputs:
forward, input gradient and kernel gradient at odd sizes, strides 1 and 2, grouped and
depthwise, float32 to a relative L2 error of 1e-5 and bfloat16 to 1e-2 of the float32 result
(bfloat16's own rounding: XLA's bfloat16 convolution is held to the same bound). Then the models
(paper and baseline at `helpers.SMALL_MODEL`) with ``conv_impl="onednn"`` against ``"xla"``, and
the choice: the fallback with one log line, the clear errors, several devices.

Tests that run the extension skip, saying why, where it does not build (``pip install
"bts_jax[onednn]"`` and a g++ make it build). The suite runs with 8 fake CPU devices, where
``auto`` picks XLA; the model tests pretend a single-device process (`ffi.device_count`), which
the unsharded ``jit`` they run is.
"""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_config
from jax import lax

from bts_jax.models import build_model
from bts_jax.models.onednn import build, ffi

STATUS = ffi.availability()
needs_onednn = pytest.mark.skipif(
    not STATUS.ok, reason=f"the oneDNN extension is unavailable: {STATUS.reason}"
)
F32_TOL, BF16_TOL = 1e-5, 1e-2
NHWC = ("NHWC", "HWIO", "NHWC")


def rel_l2(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])


def conv_and_grads(conv, x, w, dy, strides, padding, groups):
    """(y, dx, dw) of ``conv`` at (x, w) for the output cotangent dy, jitted."""

    def apply(x, w):
        return conv(x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups)

    def run(x, w, dy):
        y, vjp = jax.vjp(apply, x, w)
        return (y, *vjp(dy))

    return jax.jit(run)(x, w, dy)


# (H, W, C, O, kernel, stride, padding, groups): odd sizes, strides 1 and 2, the model's k // 2
# padding, "SAME", "VALID" with rows the stride never reaches, grouped and depthwise.
CASES = [
    (7, 9, 3, 5, 3, 1, ((1, 1), (1, 1)), 1),
    (7, 9, 4, 6, 3, 2, ((1, 1), (1, 1)), 1),
    (9, 7, 4, 8, 3, 1, "SAME", 2),
    (8, 8, 4, 4, 3, 2, "VALID", 1),
    (7, 9, 6, 6, 5, 1, ((2, 2), (2, 2)), 6),
    (7, 9, 6, 6, 5, 2, ((2, 2), (2, 2)), 6),
    (9, 9, 16, 8, 1, 1, ((0, 0), (0, 0)), 1),
]


def _inputs(h, w, c, o, k, groups, dtype, y_shape=None):
    keys = jax.random.split(jax.random.key(h * 100 + w + c), 3)
    x = jax.random.normal(keys[0], (2, h, w, c), jnp.float32)
    kernel = jax.random.normal(keys[1], (k, k, c // groups, o), jnp.float32)
    return x.astype(dtype), kernel.astype(dtype), keys[2]


def _output_shape(x, kernel, stride, padding, groups):
    """The shape (N, OH, OW, O) of XLA's convolution of ``x`` by ``kernel``."""
    return jax.eval_shape(
        lambda: lax.conv_general_dilated(
            x, kernel, (stride,) * 2, padding, dimension_numbers=NHWC, feature_group_count=groups
        )
    ).shape


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"g{c[7]}")
def test_float32_forward_and_gradients_match_xla(case):
    h, w, c, o, k, s, padding, groups = case
    x, kernel, key = _inputs(h, w, c, o, k, groups, jnp.float32)
    y_shape = _output_shape(x, kernel, s, padding, groups)
    dy = jax.random.normal(key, y_shape, jnp.float32)
    args = (x, kernel, dy, (s, s), padding, groups)
    expected = conv_and_grads(lax.conv_general_dilated, *args)
    got = conv_and_grads(ffi.onednn_conv_general_dilated, *args)
    for name, a, ref in zip(("y", "dx", "dw"), got, expected, strict=True):
        chex.assert_equal_shape([a, ref])
        assert a.dtype == ref.dtype == jnp.float32, name
        assert rel_l2(a, ref) < F32_TOL, (name, rel_l2(a, ref))


@needs_onednn
@pytest.mark.parametrize("case", CASES[:2] + CASES[4:5], ids=lambda c: "x".join(map(str, c[:6])))
def test_bfloat16_is_within_bfloat16_rounding_of_float32(case):
    h, w, c, o, k, s, padding, groups = case
    x, kernel, key = _inputs(h, w, c, o, k, groups, jnp.bfloat16)
    y_shape = _output_shape(x, kernel, s, padding, groups)
    dy = jax.random.normal(key, y_shape, jnp.float32).astype(jnp.bfloat16)
    args = ((s, s), padding, groups)
    # The reference: float32 on the same (bfloat16-exact) inputs.
    f32 = [v.astype(jnp.float32) for v in (x, kernel, dy)]
    reference = conv_and_grads(lax.conv_general_dilated, *f32, *args)
    xla = conv_and_grads(lax.conv_general_dilated, x, kernel, dy, *args)
    got = conv_and_grads(ffi.onednn_conv_general_dilated, x, kernel, dy, *args)
    for name, a, b, ref in zip(("y", "dx", "dw"), got, xla, reference, strict=True):
        assert a.dtype == jnp.bfloat16, name
        assert rel_l2(b, ref) < BF16_TOL, (name, "xla", rel_l2(b, ref))
        assert rel_l2(a, ref) < BF16_TOL, (name, rel_l2(a, ref))


@needs_onednn
def test_a_shape_builds_its_primitives_once_and_other_calls_go_to_xla():
    x, kernel, _ = _inputs(11, 5, 3, 4, 3, 1, jnp.float32)

    def loss(x, kernel):
        y = ffi.onednn_conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)
        return jnp.sum(y**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    before = ffi.cache_size()
    grad(x, kernel)
    assert ffi.cache_size() == before + 3  # forward, backward-data, backward-weights
    grad(x + 1, kernel)
    assert ffi.cache_size() == before + 3
    # Dilation is not served: the same call as lax's, bit for bit.
    dilated = dict(rhs_dilation=(2, 2), dimension_numbers=NHWC)
    chex.assert_trees_all_equal(
        ffi.onednn_conv_general_dilated(x, kernel, (1, 1), "SAME", **dilated),
        lax.conv_general_dilated(x, kernel, (1, 1), "SAME", **dilated),
    )


def _model_and_grads(conv_impl: str, baseline: bool, dtype: str = "float32"):
    overrides = {"model.conv_impl": conv_impl}
    if baseline:
        overrides.update({"model.gsconv_in": "", "model.eca_in": ""})
    config = small_config(**overrides)
    model = build_model(config.model, dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    target = jax.random.normal(jax.random.key(2), (2, 16, 16, 1), jnp.float32)

    def loss(params):
        out, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out.astype(jnp.float32) * target), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return out, grads


@needs_onednn
@pytest.mark.parametrize("baseline", [False, True], ids=["paper", "baseline"])
def test_model_output_and_gradients_equal_xla(monkeypatch, baseline):
    monkeypatch.setattr(ffi, "device_count", lambda backend: 1)
    assert ffi.resolve_conv_impl("auto") == "onednn"
    out_xla, grads_xla = _model_and_grads("xla", baseline)
    out, grads = _model_and_grads("onednn", baseline)
    assert rel_l2(out, out_xla) < 1e-5
    errors = jax.tree.map(rel_l2, grads, grads_xla)
    assert max(jax.tree.leaves(errors)) < 1e-4, errors


@needs_onednn
def test_bfloat16_model_is_as_close_to_float32_as_xla(monkeypatch):
    monkeypatch.setattr(ffi, "device_count", lambda backend: 1)
    out_f32, grads_f32 = _model_and_grads("xla", False)
    out_xla, grads_xla = _model_and_grads("xla", False, "bfloat16")
    out, grads = _model_and_grads("onednn", False, "bfloat16")
    assert out.dtype == jnp.bfloat16
    # Both are bfloat16 computations that round differently (a few 1e-3 per convolution,
    # grown by BatchNorm over 2 images: 2.4e-2 on the output, 6e-2 on the gradients for XLA).
    # oneDNN's error against float32 is held to 1.5 times XLA's own, on the output and on all
    # gradients as one vector (a leaf whose gradient nearly cancels has no relative error).
    assert rel_l2(out, out_f32) < 1.5 * rel_l2(out_xla, out_f32)
    error, error_xla = (
        rel_l2(flat(grads), flat(grads_f32)),
        rel_l2(flat(grads_xla), flat(grads_f32)),
    )
    assert error < 1.5 * error_xla, (error, error_xla)


def test_a_failed_build_is_reported_not_raised(monkeypatch):
    def fail():
        raise build.BuildError("no C++ compiler (g++) on PATH")

    monkeypatch.setattr(build, "build_library", fail)
    status = ffi.load()
    assert not status.ok and "no C++ compiler" in status.reason


def test_auto_falls_back_to_xla_with_one_log_line(monkeypatch, caplog):
    failed = ffi.Availability(False, reason="BuildError: no C++ compiler (g++) on PATH")
    monkeypatch.setattr(ffi, "availability", lambda: failed)
    monkeypatch.setattr(ffi, "device_count", lambda backend: 1)
    monkeypatch.setattr(ffi, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=ffi.__name__):
        assert ffi.resolve_conv_impl("auto") == "xla"
        out, grads = _model_and_grads("auto", False)
    lines = [r.getMessage() for r in caplog.records if r.name == ffi.__name__]
    assert len(lines) == 1 and "no C++ compiler" in lines[0], lines
    out_xla, grads_xla = _model_and_grads("xla", False)
    chex.assert_trees_all_equal((out, grads), (out_xla, grads_xla))
    with pytest.raises(RuntimeError, match=r"config\.model\.conv_impl='onednn'.*no C\+\+"):
        ffi.resolve_conv_impl("onednn")


def test_several_devices_run_xla_or_fail_clearly():
    assert jax.device_count() > 1  # conftest's fake CPU devices
    assert ffi.resolve_conv_impl("auto") == "xla"
    assert ffi.resolve_conv_impl("xla") == "xla"
    with pytest.raises(RuntimeError, match=r"config\.model\.conv_impl='onednn'.*8 devices"):
        ffi.resolve_conv_impl("onednn")
    with pytest.raises(RuntimeError, match="not 'cpu'"):
        ffi.resolve_conv_impl("onednn", backend="gpu")
    assert ffi.resolve_conv_impl("auto", backend="gpu") == "xla"


def test_an_unknown_conv_impl_names_the_config_field():
    config = small_config(**{"model.conv_impl": "mkl"})
    with pytest.raises(ValueError, match=r"config\.model\.conv_impl='mkl'"):
        build_model(config.model)
