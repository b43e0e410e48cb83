"""Configs written before the block registry build the same model: same tree, same outputs.

``tests/data/legacy_param_trees.json`` and ``legacy_outputs.npz`` were written at commit 6129bd7
by ``tools/make_legacy_model_golden.py``: the parameter and BatchNorm-statistics paths and shapes
of today's configs (so their checkpoints restore), and their outputs for the same variables.
"""

import json
import os

import jax
import numpy as np
import pytest

from tools.make_legacy_model_golden import CASES, OUTPUT_WIDTHS, case_model, variables_shapes

DATA = os.path.join(os.path.dirname(__file__), "data")
# In a one-device process the current code reproduces the file bit for bit (checked when the
# registry came in). The tests run on 8 fake CPU devices, which split XLA:CPU's thread pool and
# so the order of float sums: eval logits then differ by < 1e-7, train-mode logits (BatchNorm
# divides by batch standard deviations) by < 2e-5. A wrong block or order moves them by > 1e-2.
EVAL_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
TRAIN_TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def golden():
    with open(os.path.join(DATA, "legacy_param_trees.json")) as f:
        trees = json.load(f)
    return trees, np.load(os.path.join(DATA, "legacy_outputs.npz"))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("widths", ["config_widths", "tiny"])
def test_parameter_trees_are_those_of_6129bd7(golden, case, widths):
    trees, _ = golden
    assert variables_shapes(case_model(case, tiny=widths == "tiny")) == trees[case][widths]


# Between them every block of the legacy switches: double_conv, GSConv, ECA in a stage and on
# the skips (the trees above cover every config; tests/test_models_registry.py shows the new
# fields compile to the same programs).
@pytest.mark.slow
@pytest.mark.parametrize("case", ["paper", "skip_eca"])
def test_outputs_for_the_same_variables_are_those_of_6129bd7(golden, case):
    _, outputs = golden
    model = case_model(case, tiny=True).clone(features=OUTPUT_WIDTHS)
    x = outputs[f"{case}/input"]
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
    evaluated = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    trained, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    np.testing.assert_allclose(evaluated, outputs[f"{case}/eval"], **EVAL_TOLERANCE)
    np.testing.assert_allclose(trained, outputs[f"{case}/train"], **TRAIN_TOLERANCE)
