"""Interop tests: milesial/Pytorch-UNet weights against PyTorch's own outputs (no PyTorch needed).

The golden files in tests/data come from tools/make_milesial_golden.py (see its docstring).
"""

import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bts_jax.models import UNet, import_milesial_unet, read_state_dict
from bts_jax.models import nnx as bts_nnx
from bts_jax.models.interop.torch_io import _rebuild_tensor

DATA = os.path.join(os.path.dirname(__file__), "data")
RGB_PTH = os.path.join(DATA, "milesial_golden_rgb_state.pth")
GRAY_NPZ = os.path.join(DATA, "milesial_golden_gray_state.npz")
MAX_RELATIVE_ERROR = 1e-5


def golden_io(case):
    with np.load(os.path.join(DATA, f"milesial_golden_{case}_io.npz")) as io:
        # PyTorch is NCHW, bts_jax NHWC.
        return io["input"].transpose(0, 2, 3, 1), io["output"].transpose(0, 2, 3, 1)


def relative_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


def forward(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


# ----------------------------------------------------------------------------- golden outputs


@pytest.mark.parametrize(
    "source, case, features, num_classes",
    [(RGB_PTH, "rgb", (2, 4, 8, 16), 2), (GRAY_NPZ, "gray", (1, 2, 4, 8), 1)],
    ids=["rgb_pth", "gray_npz"],
)
def test_import_reproduces_pytorch_outputs(source, case, features, num_classes):
    model, variables = import_milesial_unet(source)
    assert model.features == features and model.num_classes == num_classes
    assert model.upsample == "transpose" and not model.gsconv_in and not model.eca_in
    x, expected = golden_io(case)
    logits = forward(model, variables, x)
    assert logits.shape == expected.shape
    assert relative_error(logits, expected) <= MAX_RELATIVE_ERROR


def test_every_tensor_maps_to_exactly_one_variable():
    state_dict = read_state_dict(RGB_PTH)
    model, variables = import_milesial_unet(state_dict)
    x, _ = golden_io("rgb")
    reference = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    shapes = jax.tree.map(lambda a: a.shape, variables)
    assert shapes == jax.tree.map(lambda a: a.shape, dict(reference))
    mapped = [n for n in state_dict if n != "mask_values" and "num_batches_tracked" not in n]
    assert (
        len(jax.tree.leaves(variables)) == len(mapped) == 9 * 10 + 4 * 2 + 2
    )  # 9 DoubleConvs, 4 ups, outc
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32


def test_batch_norm_statistics_land_in_batch_stats():
    state_dict = read_state_dict(GRAY_NPZ)
    _, variables = import_milesial_unet(state_dict)
    bn = "down2.maxpool_conv.1.double_conv.4"
    np.testing.assert_array_equal(
        variables["batch_stats"]["enc_2"]["conv_1"]["bn"]["var"], state_dict[f"{bn}.running_var"]
    )
    np.testing.assert_array_equal(
        variables["params"]["enc_2"]["conv_1"]["bn"]["scale"], state_dict[f"{bn}.weight"]
    )


def test_explicit_widths_are_checked_and_dtype_is_used():
    model, _ = import_milesial_unet(
        GRAY_NPZ, features=(1, 2, 4, 8), in_channels=1, num_classes=1, dtype=jnp.bfloat16
    )
    assert model.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"'inc\.double_conv\.0\.weight' has shape \(1, 1, 3, 3\)"):
        import_milesial_unet(GRAY_NPZ, features=(2, 4, 8, 16))


# ----------------------------------------------------------------------------- error cases


@pytest.fixture(scope="module")
def gray_state():
    return read_state_dict(GRAY_NPZ)


def test_renamed_tensor_is_named_with_its_missing_original(gray_state):
    state = {("up2.up.kernel" if n == "up2.up.weight" else n): v for n, v in gray_state.items()}
    with pytest.raises(ValueError, match=r"'up2\.up\.kernel' is not a tensor") as error:
        import_milesial_unet(state)
    assert "missing from the state_dict: ['up2.up.weight']" in str(error.value)


def test_wrong_shape_is_named(gray_state):
    state = dict(gray_state)
    state["up3.conv.double_conv.1.running_var"] = np.ones(5, np.float32)
    with pytest.raises(
        ValueError,
        match=r"'up3\.conv\.double_conv\.1\.running_var' has shape \(5,\), expected \(2,\)",
    ):
        import_milesial_unet(state)


def test_leftover_tensor_is_named(gray_state):
    state = {**gray_state, "outc.conv.num_batches_tracked": np.array(3)}
    with pytest.raises(ValueError, match=r"'outc\.conv\.num_batches_tracked' is not a tensor"):
        import_milesial_unet(state)


def test_missing_tensor_is_listed(gray_state):
    state = {n: v for n, v in gray_state.items() if n != "outc.conv.bias"}
    with pytest.raises(ValueError, match=r"lacks 1 tensor\(s\).*\['outc\.conv\.bias'\]"):
        import_milesial_unet(state)


def test_bilinear_checkpoint_is_rejected(gray_state):
    state = {n: v for n, v in gray_state.items() if ".up." not in n}
    with pytest.raises(ValueError, match="bilinear=True"):
        import_milesial_unet(state)


def test_non_unet_state_dict_is_rejected():
    with pytest.raises(ValueError, match="no tensor 'inc.double_conv.0.weight'"):
        import_milesial_unet({"model": {}, "optimizer": {}})


# ----------------------------------------------------------------------------- reading .pth files


def test_read_pth_without_torch():
    state_dict = read_state_dict(RGB_PTH)
    names = list(state_dict)
    assert names[0] == "inc.double_conv.0.weight" and names[-1] == "mask_values"
    assert state_dict["mask_values"] == [0, 1]
    assert state_dict["inc.double_conv.0.weight"].shape == (2, 3, 3, 3)
    assert state_dict["inc.double_conv.0.weight"].dtype == np.float32
    assert state_dict["up1.up.weight"].shape == (32, 16, 2, 2)  # (in, out, kH, kW)
    tracked = state_dict["inc.double_conv.1.num_batches_tracked"]
    assert tracked.shape == () and tracked.dtype == np.int64 and tracked == 7


def test_rebuild_tensor_follows_offset_and_strides():
    storage = np.arange(12, dtype=np.float32)
    # A transposed (2, 3) view starting at element 2: element (i, j) is storage[2 + i + 2 j].
    tensor = _rebuild_tensor(storage, 2, (2, 3), (1, 2), False, None)
    np.testing.assert_array_equal(tensor, [[2, 4, 6], [3, 5, 7]])
    with pytest.raises(pickle.UnpicklingError, match="runs past its storage"):
        _rebuild_tensor(storage, 8, (2, 3), (1, 2), False, None)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pth_with_foreign_globals_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"a": _RunsCode()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth.*refusing to load global (posix|nt)\.system"):
        read_state_dict(path)


def test_legacy_and_missing_files_are_reported(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="legacy"):
        read_state_dict(legacy)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_state_dict(tmp_path / "nothing.pth")


# ----------------------------------------------------------------------------- Flax NNX


@pytest.fixture(scope="module")
def linen_model_and_variables():
    """A tiny model with stage and skip ECA (the NNX layout splits them out of the Linen blocks)."""
    model = UNet(features=(2, 4, 8), eca_in=("encoder", "skip"))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
    stats = jax.tree.map(lambda a: a + 0.5, variables["batch_stats"])  # var stays > 0
    return model, {"params": variables["params"], "batch_stats": stats}, x


@pytest.mark.slow
def test_nnx_matches_linen_outputs_and_gradients(linen_model_and_variables):
    model, variables, x = linen_model_and_variables
    target = jax.random.normal(jax.random.key(2), (2, 32, 32, 1))
    nnx_model = bts_nnx.UNet.from_linen(model, variables)
    assert isinstance(nnx_model.encoder[1].eca, nnx.Module) and nnx_model.bottleneck.eca is None

    eval_linen = forward(model, variables, x)
    eval_nnx = nnx.jit(lambda m, x: m(x, train=False))(nnx_model, x)
    np.testing.assert_allclose(eval_nnx, eval_linen, rtol=0, atol=1e-6)

    def linen_loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean((logits - target) ** 2), updates

    grads_linen, updates = jax.jit(jax.grad(linen_loss, has_aux=True))(variables["params"])

    @nnx.jit
    def nnx_grads(m):
        return nnx.grad(lambda m: jnp.mean((m(x, train=True) - target) ** 2))(m)

    grads_nnx = bts_nnx.to_linen_variables(nnx_grads(nnx_model))
    assert set(grads_nnx) == {"params"}
    assert jax.tree.structure(grads_nnx["params"]) == jax.tree.structure(grads_linen)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_linen))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale),
        grads_nnx["params"],
        grads_linen,
    )
    # train=True updated the NNX model's running statistics in place, as Linen's mutable did.
    stats = bts_nnx.to_linen_variables(nnx.state(nnx_model, nnx.BatchStat))["batch_stats"]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        stats,
        updates["batch_stats"],
    )


@pytest.mark.slow
def test_nnx_round_trip_and_errors(linen_model_and_variables):
    model, variables, _ = linen_model_and_variables
    nnx_model = bts_nnx.UNet.from_linen(model, variables)
    back = bts_nnx.to_linen_variables(nnx.state(nnx_model))
    assert jax.tree.structure(back) == jax.tree.structure(dict(variables))
    jax.tree.map(np.testing.assert_array_equal, back, dict(variables))

    params = jax.tree.map(lambda a: a, variables["params"])
    params["enc_1"]["eca"]["conv"]["kernel"] = jnp.zeros((7, 1, 1))
    with pytest.raises(ValueError, match=r"enc_1/eca/conv/kernel has shape \(7, 1, 1\)"):
        bts_nnx.UNet.from_linen(model, {**variables, "params": params})
    params = {**variables["params"], "extra_head": {"kernel": jnp.zeros(3)}}
    with pytest.raises(ValueError, match="extra_head/kernel has no place"):
        bts_nnx.UNet.from_linen(model, {**variables, "params": params})
    with pytest.raises(ValueError, match="unset"):
        bts_nnx.UNet.from_linen(model, {"params": variables["params"]})


@pytest.mark.slow
def test_nnx_model_from_milesial_weights_reproduces_pytorch():
    nnx_model = bts_nnx.UNet.from_linen(*import_milesial_unet(GRAY_NPZ))
    x, expected = golden_io("gray")
    logits = nnx.jit(lambda m, x: m(x, train=False))(nnx_model, x)
    assert relative_error(logits, expected) <= MAX_RELATIVE_ERROR


def test_nnx_unet_initialises_and_validates_like_linen():
    with pytest.raises(ValueError, match="UNet.eca_in has unknown entries"):
        bts_nnx.UNet(1, features=(2, 4), eca_in=("head",), rngs=nnx.Rngs(0))
    model = bts_nnx.UNet(3, features=(2, 4), num_classes=3, rngs=nnx.Rngs(0))
    linen = UNet(features=(2, 4), num_classes=3)
    image = jnp.zeros((1, 4, 4, 3))
    expected = jax.jit(lambda key: linen.init(key, image, train=False))(nnx.Rngs(0).params())
    initial = bts_nnx.to_linen_variables(nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, initial, dict(expected))
    assert model(jnp.zeros((1, 8, 8, 3)), train=False).shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(jnp.zeros((1, 6, 6, 3)), train=False)


class _Gate(nnx.Module):
    """Channel attention written in NNX: a learned per-channel gate, initialised closed."""

    def __init__(self, channels):
        self.logit = nnx.Param(jnp.full((channels,), -30.0))

    def __call__(self, x):
        return x * jax.nn.sigmoid(self.logit[...])


@pytest.mark.slow
def test_nnx_stage_attention_can_be_added_in_place():
    model = bts_nnx.UNet.from_linen(*import_milesial_unet(GRAY_NPZ))
    x, expected = golden_io("gray")
    model.encoder[2].eca = _Gate(4)  # The baseline had no ECA there.
    logits = nnx.jit(lambda m, x: m(x, train=False))(model, x)
    assert relative_error(logits, expected) > 100 * MAX_RELATIVE_ERROR  # The gate took effect.
    grads = nnx.grad(lambda m: jnp.mean(m(x, train=False) ** 2))(model)
    assert grads["encoder"][2]["eca"]["logit"].shape == (4,)
