"""The head's prior (Lin et al. 2017): the bias that makes the first predictions p."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax.models import UNet, head


@pytest.mark.parametrize("prior", [1e-4, 0.015, 0.5, 0.9])
def test_prior_logit_is_the_inverse_sigmoid(prior):
    assert 1 / (1 + math.exp(-head.prior_logit(prior))) == pytest.approx(prior, rel=1e-12)


@pytest.mark.parametrize("value", [None, "auto", 0.3, 1e-6])
def test_valid_priors_pass(value):
    assert head.check_output_bias_prior(value) == value


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, -0.5, 1.5, "half", True, float("nan"), "0.1x"])
def test_invalid_priors_name_the_setting(value):
    with pytest.raises(ValueError, match=r"config\.model\.output_bias_prior=.*strictly between"):
        head.check_output_bias_prior(value)


@pytest.mark.parametrize("num_classes", [1, 2, 3, 5])
def test_output_bias_gives_the_tumour_classes_probability_p(num_classes):
    prior = 0.015
    bias = head.output_bias(prior, num_classes)
    chex.assert_shape(bias, (num_classes,))
    assert bias.dtype == np.float32
    if num_classes == 1:
        np.testing.assert_allclose(jax.nn.sigmoid(bias), [prior], rtol=1e-6)
    else:  # Softmax: background 1 - p, the other classes p together, equally.
        probabilities = np.asarray(jax.nn.softmax(bias))
        np.testing.assert_allclose(probabilities[0], 1 - prior, rtol=1e-6)
        np.testing.assert_allclose(probabilities[1:], prior / (num_classes - 1), rtol=1e-5)


def test_with_output_bias_replaces_only_the_heads_bias():
    model = UNet(features=(4,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), train=False)["params"]
    bias = head.output_bias(0.1, 1)
    new = jax.jit(head.with_output_bias)(params, bias)
    np.testing.assert_allclose(jax.nn.sigmoid(new["head"]["bias"]), [0.1], rtol=1e-6)
    chex.assert_trees_all_equal(new["head"]["kernel"], params["head"]["kernel"])
    chex.assert_trees_all_equal({**new, "head": {}}, {**params, "head": {}})
    assert params["head"]["bias"].tolist() == [0.0]  # The input is not changed.


def test_with_output_bias_refuses_a_bias_that_does_not_fit():
    model = UNet(features=(4,), num_classes=2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), train=False)["params"]
    with pytest.raises(ValueError, match=r"does not fit the model's head"):
        head.with_output_bias(params, head.output_bias(0.1, 1))
