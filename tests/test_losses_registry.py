"""The loss registry (``config.loss.name``): names, sums, MONAI goldens, errors, user losses."""

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from bts_jax.naming import calls
from bts_jax.train import loss_builder, losses, region_losses, registry
from bts_jax.train.config_checks import validate_config

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "monai_loss_goldens.json")
BUILT_IN = ("bce", "bce_dice", "dice", "focal", "focal_tversky", "tversky")


def _batch(num_classes=1, seed=0, shape=(3, 6, 7)):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(2 * rng.normal(size=(*shape, num_classes)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, max(num_classes, 2), size=shape), jnp.int32)
    return logits, labels


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``my_losses`` on the Python path with a loss ``edge`` (weighted BCE)."""
    (tmp_path / "my_losses.py").write_text(
        "import jax.numpy as jnp\n"
        "import optax\n\n\n"
        "def edge(logits, labels, valid=None, *, weight=2.0):\n"
        "    ce = optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(jnp.float32))\n"
        "    return weight * jnp.mean(ce)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_losses"
    calls.import_path.cache_clear()
    sys.modules.pop("my_losses", None)


def test_every_built_in_name_is_registered():
    assert set(BUILT_IN) <= set(registry.LOSSES.names())


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_every_loss_is_a_finite_float32_scalar_with_finite_gradients(name, num_classes):
    logits, labels = _batch(num_classes)
    loss_fn = loss_builder.build_loss(name)
    if name == "focal" and num_classes > 1:
        with pytest.raises(ValueError, match="one logit channel"):
            loss_fn(logits, labels, None)
        return
    (loss, metrics), grads = jax.jit(
        jax.value_and_grad(lambda x: loss_fn(x, labels, None), has_aux=True)
    )(logits)
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert float(metrics["loss"]) == float(loss)
    assert grads.shape == logits.shape and bool(jnp.all(jnp.isfinite(grads)))
    assert float(jnp.max(jnp.abs(grads))) > 0


def test_metric_keys_bce_dice_keeps_todays_and_sums_name_their_terms():
    logits, labels = _batch()
    keys = {
        "bce_dice": {"loss", "cross_entropy", "dice_loss"},
        "bce:1,dice:1": {"loss", "cross_entropy", "dice_loss"},
        "focal": {"loss", "focal_loss"},
        "dice:1,dice(per_image=true):1": {"loss", "dice_loss", "dice_loss_2"},
        "tversky(0.3,0.7):2,focal_tversky": {"loss", "tversky_loss", "focal_tversky_loss"},
    }
    for spec, expected in keys.items():
        assert set(loss_builder.build_loss(spec)(logits, labels)[1]) == expected, spec


def test_legacy_fields_are_todays_loss_bit_for_bit():
    logits, labels = _batch(seed=3)
    valid = jnp.array([True, False, True])
    for bce_weight, dice_weight in ((1.0, 1.0), (0.5, 2.0), (0.0, 1.0)):
        config = tiny_config(**{"loss.bce_weight": bce_weight, "loss.dice_weight": dice_weight})
        assert config.loss.name == ""
        new = jax.jit(loss_builder.loss_from_config(config.loss))(logits, labels, valid)
        old = jax.jit(
            lambda x, y, v, b=bce_weight, d=dice_weight: losses.segmentation_loss(
                x, y, v, bce_weight=b, dice_weight=d
            )
        )(logits, labels, valid)
        assert jax.tree.map(lambda a, b: bool(a == b), new, old) == jax.tree.map(
            lambda _: True, old
        )


def test_weighted_sum_is_the_sum_of_its_terms():
    logits, labels = _batch(seed=1)
    total, parts = loss_builder.build_loss("focal(gamma=2):0.5,dice:2,tversky(0.3,0.7)")(
        logits, labels
    )
    focal = losses.focal_loss(logits, labels, gamma=2.0)
    dice = losses.soft_dice_loss(logits, labels)
    tversky = region_losses.tversky_loss(logits, labels, alpha=0.3, beta=0.7)
    np.testing.assert_allclose(float(total), 0.5 * focal + 2 * dice + tversky, rtol=1e-6)
    np.testing.assert_allclose(float(parts["focal_loss"]), float(focal), rtol=1e-6)


def test_tversky_at_one_half_is_dice_and_focal_tversky_at_one_is_tversky():
    logits, labels = _batch(seed=2)
    for per_image in (False, True):
        dice = region_losses.dice_loss(logits, labels, per_image=per_image, smooth=0.0)
        tversky = region_losses.tversky_loss(logits, labels, smooth=0.0, per_image=per_image)
        np.testing.assert_allclose(float(tversky), float(dice), rtol=1e-6)
        ft = region_losses.focal_tversky_loss(
            logits, labels, alpha=0.4, beta=0.6, gamma=1.0, per_image=per_image
        )
        t = region_losses.tversky_loss(logits, labels, alpha=0.4, beta=0.6, per_image=per_image)
        np.testing.assert_allclose(float(ft), float(t), rtol=1e-6)


def test_focal_at_gamma_zero_is_bce_and_per_image_dice_by_hand():
    logits, labels = _batch(seed=4)
    np.testing.assert_allclose(
        float(losses.focal_loss(logits, labels, gamma=0.0)),
        float(losses.sigmoid_binary_cross_entropy(logits, labels)),
        rtol=1e-6,
    )
    p = 1 / (1 + np.exp(-np.asarray(logits[..., 0], np.float64)))
    g = np.asarray(labels, np.float64)
    per_image = [
        1 - (2 * np.sum(p[b] * g[b]) + 1) / (p[b].sum() + g[b].sum() + 1) for b in range(3)
    ]
    got = region_losses.dice_loss(logits, labels, per_image=True)
    np.testing.assert_allclose(float(got), np.mean(per_image), rtol=1e-5)


@pytest.mark.parametrize(
    "spec", ["dice(per_image=true)", "focal", "tversky(0.3,0.7,per_image=true)", "focal_tversky"]
)
def test_padded_examples_change_nothing_and_all_padding_is_zero(spec):
    logits, labels = _batch(seed=5)
    loss_fn = jax.jit(loss_builder.build_loss(spec))
    pad_logits = jnp.concatenate([logits, 30 * logits[:2]], 0)
    pad_labels = jnp.concatenate([labels, 1 - labels[:2]], 0)
    valid = jnp.array([True, True, True, False, False])
    np.testing.assert_allclose(
        float(loss_fn(pad_logits, pad_labels, valid)[0]),
        float(loss_fn(logits, labels, None)[0]),
        rtol=1e-6,
    )
    none_valid = jnp.zeros((5,), bool)
    loss, grads = jax.value_and_grad(lambda x: loss_fn(x, pad_labels, none_valid)[0])(pad_logits)
    assert float(loss) == 0.0 and bool(jnp.all(jnp.isfinite(grads)))


def test_monai_goldens():
    """Values and gradients against MONAI 1.6.1 (tools/make_loss_goldens.py; no torch here)."""
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert golden["versions"]["monai"] == "1.6.1"
    logits = jnp.asarray(golden["logits"], jnp.float32)
    labels = jnp.asarray(golden["labels"], jnp.int32)
    monai = {case["monai"] for case in golden["cases"]}
    assert monai == {"DiceLoss", "FocalLoss", "TverskyLoss", "DiceFocalLoss"}
    for case in golden["cases"]:
        loss_fn = loss_builder.build_loss(case["ours"])
        value, grad = jax.jit(jax.value_and_grad(lambda x, f=loss_fn: f(x, labels, None)[0]))(
            logits
        )
        np.testing.assert_allclose(float(value), case["value"], rtol=1e-5, err_msg=case["name"])
        np.testing.assert_allclose(
            np.asarray(grad), np.asarray(case["grad"]), rtol=1e-4, atol=1e-7, err_msg=case["name"]
        )


@pytest.mark.parametrize(
    "spec,message",
    [
        ("focla", r"config.loss.name='focla': unknown loss 'focla'; registered: bce, bce_dice"),
        ("focal(gama=2)", r"focal has no argument 'gama'; its arguments: gamma, alpha"),
        ("focal(1,2,3)", r"focal takes at most 2 arguments"),
        ("bce:1,,dice", r"empty term"),
        ("dice(per_image=yes)", r"not a number, string or true/false"),
        ("focal(gamma=2", r"unbalanced '\(' or quote"),
        ("no_such_module_xyz:loss", r"cannot import the loss 'no_such_module_xyz:loss'"),
        ("", r"give a loss name"),
    ],
)
def test_bad_loss_names_give_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        loss_builder.build_loss(spec)


def test_config_checks_refuse_bad_losses_before_anything_is_built():
    config = tiny_config(**{"loss.name": "focla"})
    with pytest.raises(ValueError, match=r"config.loss.name='focla': unknown loss"):
        validate_config(config, device_count=8, process_count=1)
    config = tiny_config(**{"loss.name": "focal", "loss.bce_weight": 0.5})
    with pytest.raises(ValueError, match=r"config.loss.bce_weight=0.5 applies only when"):
        validate_config(config, device_count=8, process_count=1)
    config = tiny_config(**{"loss.name": "focal", "model.num_classes": 3})
    with pytest.raises(ValueError, match=r"config.loss.name='focal' fails on logits"):
        validate_config(config, device_count=8, process_count=1)


def test_a_users_loss_by_import_path_and_by_registered_name(user_module):
    logits, labels = _batch(seed=6)
    bce = float(losses.sigmoid_binary_cross_entropy(logits, labels))
    loss, parts = loss_builder.build_loss("my_losses:edge(weight=3):0.5,dice")(logits, labels)
    dice = float(losses.soft_dice_loss(logits, labels))
    np.testing.assert_allclose(float(loss), 0.5 * 3 * bce + dice, rtol=1e-6)
    assert set(parts) == {"loss", "edge_loss", "dice_loss"}
    validate_config(tiny_config(**{"loss.name": "my_losses:edge"}), device_count=8, process_count=1)
    import my_losses

    registry.register_loss("edge", my_losses.edge, metric="edge")
    try:
        assert "edge" in registry.LOSSES.names()
        _, parts = loss_builder.build_loss("edge(weight=1)")(logits, labels)
        np.testing.assert_allclose(float(parts["edge"]), bce, rtol=1e-6)
        with pytest.raises(ValueError, match="registered already"):
            registry.register_loss("edge", my_losses.edge)
    finally:
        registry.LOSSES.unregister("edge")


def test_a_users_loss_that_breaks_the_contract_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad_losses.py").write_text(
        "def per_pixel(logits, labels, valid=None):\n    return logits[..., 0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ValueError, match=r"returns float32\[2, 8, 8\]; a loss returns"):
            validate_config(
                tiny_config(**{"loss.name": "bad_losses:per_pixel"}),
                device_count=8,
                process_count=1,
            )
    finally:
        calls.import_path.cache_clear()
        sys.modules.pop("bad_losses", None)


def test_parse_terms_and_calls():
    terms = registry.parse_terms("focal(gamma=2, alpha=0.25):1,my.mod:fn(x='a,b'):0.5,dice")
    assert [(c.name, c.args, dict(c.kwargs), w) for c, w in terms] == [
        ("focal", (), {"gamma": 2, "alpha": 0.25}, 1.0),
        ("my.mod:fn", (), {"x": "a,b"}, 0.5),
        ("dice", (), {}, 1.0),
    ]
    call = registry.parse_call("tversky(0.3, 0.7, per_image=true)")
    assert call.args == (0.3, 0.7) and dict(call.kwargs) == {"per_image": True}
    assert math.isclose(registry.parse_terms("dice:1e-1")[0][1], 0.1)


def test_legacy_loss_name_maps_the_old_fields():
    assert loss_builder.legacy_loss_name({"bce_weight": 0.5, "dice_weight": 2}) == (
        "bce_dice(bce_weight=0.5,dice_weight=2.0)"
    )
    assert loss_builder.legacy_loss_name({}) == "bce_dice(bce_weight=1.0,dice_weight=1.0)"
    assert loss_builder.legacy_loss_name({"name": "focal", "bce_weight": 1.0}) == "focal"
    # config.json of a workdir from before the registry has no loss.name.
    config = tiny_config()
    del config.loss["name"]
    logits, labels = _batch(seed=7)
    old = losses.segmentation_loss(logits, labels)
    new = loss_builder.loss_from_config(config.loss)(logits, labels)
    assert float(new[0]) == float(old[0])


def test_registry_register_names_and_errors():
    table = registry.Registry("thing", "(x) -> y", 1)
    table.register("b_thing", lambda x, *, k=1: x + k, note="meta")
    table.register("a_thing", lambda x: x)
    assert table.names() == ("a_thing", "b_thing")
    assert table.metadata("b_thing") == {"note": "meta"} and table.metadata("x:y") == {}
    assert table.bind(registry.parse_call("b_thing(k=5)"), "s", "b_thing(k=5)")(1) == 6
    assert table.bind(registry.parse_call("b_thing"), "s", "b", {"k": 2, "other": 0})(1) == 3
    with pytest.raises(ValueError, match="lower-case"):
        table.register("Bad-Name", lambda x: x)
    with pytest.raises(TypeError, match="must be a function"):
        table.register("c_thing", 3)
    with pytest.raises(ValueError, match=r"where='z': unknown thing 'z'; registered: a_thing"):
        table.function("z", "where", "z")
    with pytest.raises(ValueError, match="given twice"):
        table.bind(registry.parse_call("b_thing(2,k=5)"), "s", "v")
    table.unregister("a_thing")
    assert table.names() == ("b_thing",)
