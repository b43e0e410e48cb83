"""Faster formulations of the model's layers compute the same function with the same parameters."""

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax.configs import test as test_config
from bts_jax.models import UNet, build_model, model_summary
from bts_jax.models.layers import (
    GSConv,
    UpConvGemm,
    block_diagonal_conv,
    resolve_upsample_impl,
    shifted_depthwise_conv,
)
from bts_jax.models.unet import Upsample

TINY = (4, 8, 16, 32)
PAPER_PLACES = ("bottleneck", "decoder", "encoder")


def _conv_transpose(features):
    return nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("shape,features", [((2, 5, 7, 3), 4), ((1, 6, 6, 16), 8)])
def test_up_conv_gemm_equals_conv_transpose_in_parameters_outputs_and_gradients(shape, features):
    x = jax.random.normal(jax.random.key(0), shape)
    reference, gemm = _conv_transpose(features), UpConvGemm(features)
    variables = reference.init(jax.random.key(1), x)
    # Same names, shapes and initial values from the same key.
    chex.assert_trees_all_equal(gemm.init(jax.random.key(1), x), variables)
    # A non-zero bias, so that its gradient and its broadcast are checked too.
    variables = jax.tree.map(lambda v: v + 0.1, variables)

    def apply(module):
        return lambda params, x: module.apply({"params": params}, x)

    out = apply(gemm)(variables["params"], x)
    expected = apply(reference)(variables["params"], x)
    chex.assert_shape(out, (shape[0], 2 * shape[1], 2 * shape[2], features))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)

    cotangent = jax.random.normal(jax.random.key(2), expected.shape)
    grads = [jax.vjp(apply(m), variables["params"], x)[1](cotangent) for m in (gemm, reference)]
    # (kernel, bias) gradients and the input gradient.
    for ours, theirs in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
        chex.assert_equal_shape([ours, theirs])
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_up_conv_gemm_is_one_matrix_product_without_a_dilated_convolution():
    x = jnp.ones((2, 4, 4, 6))
    gemm = UpConvGemm(8)
    variables = gemm.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: gemm.apply(v, x).sum()))(variables))
    assert "conv_general_dilated" not in jaxpr
    assert "dot_general" in jaxpr


def test_up_conv_gemm_computes_in_the_given_dtype():
    x = jnp.ones((1, 2, 2, 4))
    gemm = UpConvGemm(4, dtype=jnp.bfloat16)
    variables = gemm.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    out = gemm.apply(variables, x)
    expected = _conv_transpose(4).clone(dtype=jnp.bfloat16).apply(variables, x)
    assert out.dtype == expected.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        out.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=1e-2
    )


def test_resolve_upsample_impl_picks_gemm_on_cpu_only():
    assert resolve_upsample_impl("auto", "cpu") == "gemm"
    assert resolve_upsample_impl("auto", "gpu") == "conv_transpose"
    assert resolve_upsample_impl("auto", "tpu") == "conv_transpose"
    assert resolve_upsample_impl("gemm", "gpu") == "gemm"
    assert resolve_upsample_impl("conv_transpose", "cpu") == "conv_transpose"
    assert resolve_upsample_impl("auto") == "gemm"  # The tests run on CPU.
    with pytest.raises(ValueError, match="upsample_impl='fft'"):
        resolve_upsample_impl("fft")


@pytest.mark.parametrize(
    "impl,dilated", [("conv_transpose", True), ("gemm", False), ("auto", False)]
)
def test_upsample_impl_decides_the_operation_actually_traced(impl, dilated):
    module = Upsample(8, impl=impl)
    x = jnp.ones((2, 4, 4, 6))
    variables = module.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(module.apply)(variables, x))
    assert bool(re.search(r"lhs_dilation=\(2, 2\)", jaxpr)) == dilated


@pytest.mark.slow
@pytest.mark.parametrize("places", [(), PAPER_PLACES])
def test_unet_upsample_impls_share_parameters_and_agree_in_outputs_and_gradients(places):
    # Two stages: both up-convolutions of a decoder, at a quarter of the four-stage compile.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    mask = (jax.random.uniform(jax.random.key(1), x.shape) > 0.7).astype(jnp.float32)
    results = {}
    for impl in ("conv_transpose", "gemm"):
        model = UNet((4, 8), gsconv_in=places, eca_in=places, upsample_impl=impl)
        # Initialised in one compiled program rather than op by op.
        variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(2), x)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean((jax.nn.sigmoid(logits) - mask) ** 2), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
        results[impl] = variables, logits, grads
    (v_ref, logits_ref, grads_ref), (v_gemm, logits_gemm, grads_gemm) = results.values()
    chex.assert_trees_all_equal(v_gemm, v_ref)  # Same names, shapes and initial values.
    np.testing.assert_allclose(logits_gemm, logits_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads_gemm, grads_ref, rtol=1e-4, atol=1e-5)


def test_build_model_passes_upsample_impl_and_rejects_bad_values():
    config = test_config.get_config()
    assert build_model(config.model).upsample_impl == "auto"
    config.model.upsample_impl = "gemm"
    assert build_model(config.model).upsample_impl == "gemm"
    config.model.upsample_impl = "fft"
    with pytest.raises(ValueError, match="config.model.upsample_impl='fft'"):
        build_model(config.model)
    del config.model["upsample_impl"]  # A config written before the field existed.
    assert build_model(config.model).upsample_impl == "auto"


def test_model_summary_counts_the_same_flops_whatever_the_upsample_impl():
    summaries = [
        model_summary(UNet(TINY, upsample_impl=impl), 32) for impl in ("conv_transpose", "gemm")
    ]
    assert summaries[0] == summaries[1]


# ----------------------------------------------------------------------------- shifted depthwise

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("padding", [((2, 2), (2, 2)), ((1, 3), (0, 4)), ((0, 0), (1, 1))])
def test_shifted_depthwise_conv_equals_the_grouped_convolution(padding):
    x = jax.random.normal(jax.random.key(0), (2, 11, 9, 6))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, 1, 6))
    kwargs = dict(
        feature_group_count=6, dimension_numbers=NHWC, precision=jax.lax.Precision.HIGHEST
    )

    def grouped(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, **kwargs)

    def shifted(x, kernel):
        return shifted_depthwise_conv(x, kernel, (1, 1), padding, **kwargs)

    expected = grouped(x, kernel)
    np.testing.assert_allclose(shifted(x, kernel), expected, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.key(2), expected.shape)
    grads = [jax.vjp(f, x, kernel)[1](cotangent) for f in (shifted, grouped)]
    for ours, theirs in zip(*grads, strict=True):  # input, then kernel gradient
        chex.assert_equal_shape([ours, theirs])
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,c_in,c_out,stride", [(6, 6, 6, 2), (1, 3, 4, 1), (2, 4, 6, 1)])
def test_shifted_depthwise_conv_passes_other_convolutions_on(groups, c_in, c_out, stride):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, c_in))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, c_in // groups, c_out))
    args = (x, kernel, (stride, stride), ((2, 2), (2, 2)))
    kwargs = dict(feature_group_count=groups, dimension_numbers=NHWC)
    np.testing.assert_array_equal(
        shifted_depthwise_conv(*args, **kwargs), block_diagonal_conv(*args, **kwargs)
    )


def test_shifted_depthwise_conv_keeps_the_compute_dtype():
    x = jnp.ones((1, 6, 6, 4), jnp.bfloat16)
    kernel = jnp.full((5, 5, 1, 4), 0.5, jnp.bfloat16)
    args = (x, kernel, (1, 1), ((2, 2), (2, 2)))
    out = shifted_depthwise_conv(*args, feature_group_count=4, dimension_numbers=NHWC)
    assert out.dtype == jnp.bfloat16
    assert float(out[0, 3, 3, 0]) == 12.5  # 25 taps of 0.5, accumulated in float32


def test_gsconv_shifted_runs_the_depthwise_forward_without_a_convolution():
    module = GSConv(8, depthwise_impl="shifted")
    x = jnp.ones((2, 8, 8, 3))
    variables = module.init(jax.random.key(0), x, train=False)
    jaxpr = str(jax.make_jaxpr(lambda v: module.apply(v, x, train=False))(variables))
    assert jaxpr.count("conv_general_dilated[") == 1  # the dense 3x3 branch only


@pytest.mark.slow
def test_unet_shifted_depthwise_agrees_with_grouped_in_outputs_and_gradients():
    # Two stages: GSConv's depthwise half in encoder, bottleneck and decoder, compiled quicker.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    mask = (jax.random.uniform(jax.random.key(1), x.shape) > 0.7).astype(jnp.float32)
    results = []
    for impl in ("grouped", "shifted"):
        model = UNet((4, 8), gsconv_in=PAPER_PLACES, eca_in=PAPER_PLACES, depthwise_impl=impl)
        # Initialised in one compiled program rather than op by op.
        variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(2), x)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean((jax.nn.sigmoid(logits) - mask) ** 2), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
        results.append((variables, logits, grads))
    (v_ref, logits_ref, grads_ref), (v_new, logits_new, grads_new) = results
    chex.assert_trees_all_equal(v_new, v_ref)
    np.testing.assert_allclose(logits_new, logits_ref, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(grads_new, grads_ref, rtol=1e-3, atol=1e-5)
