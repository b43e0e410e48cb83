"""The side-by-side benchmark (benchmarks/vs_pytorch.py, its steps in step_impls.py): JAX-only mode,
and the PyTorch twin when PyTorch is installed (`pip install -e ".[bench]"`)."""

import copy

import jax
import numpy as np
import pytest

# Two stages: every block of both models, compiled in half the time of four.
TINY = ["--features=4,8", "--image_size=16", "--batch=2"]


@pytest.fixture(scope="module")
def vs():
    import vs_pytorch

    return vs_pytorch


@pytest.mark.slow
def test_jax_only_mode_times_one_tiny_step(vs, capsys):
    args = ["--models=paper", "--dtypes=float32", "--frameworks=jax"]
    rows = vs.main([*TINY, *args, "--repeats=1", "--steps=1", "--warmup=0"])
    assert [row["impl"] for row in rows] == ["bts_jax float32"]
    assert rows[0]["median"] > 0 and rows[0]["gflops"] > 0
    assert rows[0]["ratio"] is None  # no PyTorch row to compare with
    out = capsys.readouterr().out
    assert "| custom 16px b2 w4 | paper | bts_jax float32 |" in out


@pytest.mark.slow
def test_depthwise_impls_give_one_paper_row_each_and_one_baseline_row(vs):
    args = ["--dtypes=float32", "--frameworks=jax", "--depthwise_impls=grouped,dense"]
    rows = vs.main([*TINY, *args, "--repeats=1", "--steps=1", "--warmup=0"])
    assert [(row["model"], row["impl"]) for row in rows] == [
        ("baseline", "bts_jax float32"),
        ("paper", "bts_jax float32 (depthwise grouped)"),
        ("paper", "bts_jax float32 (depthwise dense)"),
    ]


@pytest.mark.slow
def test_upsample_impls_give_one_row_each_for_both_models(vs):
    args = ["--dtypes=float32", "--frameworks=jax", "--upsample_impls=conv_transpose,gemm"]
    rows = vs.main([*TINY, *args, "--repeats=1", "--steps=1", "--warmup=0"])
    assert [(row["model"], row["impl"]) for row in rows] == [
        ("baseline", "bts_jax float32 (upsample conv_transpose)"),
        ("baseline", "bts_jax float32 (upsample gemm)"),
        ("paper", "bts_jax float32 (upsample conv_transpose)"),
        ("paper", "bts_jax float32 (upsample gemm)"),
    ]
    # One FLOP count per model (its own formulation): GFLOP/s scale with images/s.
    for a, b in (rows[:2], rows[2:]):
        assert a["gflops"] / a["median"] == pytest.approx(b["gflops"] / b["median"])


@pytest.mark.slow
def test_conv_impls_give_one_row_each(vs):
    # Eight fake devices here, so only "xla" runs (oneDNN needs a one-device process).
    args = ["--dtypes=float32", "--frameworks=jax", "--models=baseline", "--conv_impls=auto,xla"]
    rows = vs.main([*TINY, *args, "--repeats=1", "--steps=1", "--warmup=0"])
    assert [row["impl"] for row in rows] == ["bts_jax float32", "bts_jax float32 (conv xla)"]


def test_bad_arguments_name_the_flag(vs):
    with pytest.raises(SystemExit, match="--frameworks"):
        vs.parse_args(["--frameworks=tensorflow"])
    with pytest.raises(SystemExit, match="--depthwise_impls"):
        vs.parse_args(["--depthwise_impls=fft"])
    with pytest.raises(SystemExit, match="--upsample_impls"):
        vs.parse_args(["--upsample_impls=nearest"])
    with pytest.raises(SystemExit, match="--conv_impls"):
        vs.parse_args(["--conv_impls=mkl"])
    assert vs.parse_args(["--conv_impls=xla,onednn"]).conv_impls == ["xla", "onednn"]
    assert vs.parse_args(["--sizes=wide"]).sizes == [("wide", vs.SIZES["wide"])]
    with pytest.raises(SystemExit):
        vs.parse_args(["--features=4,8", "--image_size=16"])  # --batch missing


SIZE = dict(features=(4, 8, 16, 32), image_size=16, batch=2)


@pytest.fixture(scope="module", params=["baseline", "paper"])
def built(vs, request):
    """(config, batch, Flax variables, Flax model, PyTorch twin) of a tiny model."""
    pytest.importorskip("torch")
    config = vs.make_config(SIZE, vs.MODELS[request.param], "float32")
    batch = vs.make_batch(SIZE)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    _, initial, model, flops = vs.step_impls.jax_impl(config, batch, mesh)
    assert flops > 0
    return config, batch, initial, model, vs.step_impls.torch_twin(config, initial)


def test_torch_twin_agrees_and_refuses_on_mismatch(vs, built):
    import torch

    _, batch, initial, model, twin = built
    errors = vs.step_impls.check_agreement(model, initial, twin, batch, tolerance=1e-4)
    assert max(errors.values()) < 1e-4
    broken = copy.deepcopy(twin)
    with torch.no_grad():
        broken.head.bias.add_(1.0)
    with pytest.raises(SystemExit, match="disagrees"):
        vs.step_impls.check_agreement(model, initial, broken, batch, tolerance=1e-4)


def test_torch_loss_equals_bts_jax_loss():
    torch = pytest.importorskip("torch")
    import torch_unet

    from bts_jax.train import losses

    logits = np.random.default_rng(0).standard_normal((2, 8, 8, 1)).astype(np.float32)
    mask = (np.random.default_rng(1).random((2, 8, 8)) < 0.4).astype(np.int32)
    ours, _ = losses.segmentation_loss(logits, mask)
    theirs = torch_unet.segmentation_loss(
        torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(mask)
    )
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_torch_train_step_runs_on_a_copy_of_the_twin(vs, built):
    _, batch, initial, _, twin = built
    impl = vs.step_impls.torch_impl(twin, batch, compile_model=False)
    impl.run(1)
    # torch_impl trains a copy: the twin keeps the Flax weights.
    head = twin.head.weight.detach().numpy()[:, :, 0, 0].T
    np.testing.assert_allclose(head, np.asarray(initial["params"]["head"]["kernel"])[0, 0])


@pytest.mark.slow
def test_bfloat16_rows_are_compared_with_pytorch_autocast(vs):
    pytest.importorskip("torch")
    args = ["--models=baseline", "--dtypes=float32,bfloat16", "--frameworks=jax,torch"]
    rows = vs.main([*TINY, *args, "--repeats=1", "--steps=1", "--warmup=0"])
    by_name = {row["impl"]: row for row in rows}
    assert list(by_name) == [
        "bts_jax float32",
        "bts_jax bfloat16",
        "torch eager float32",
        "torch eager bfloat16 autocast",
    ]
    for dtype, torch_row in (
        ("float32", "torch eager float32"),
        ("bfloat16", "torch eager bfloat16 autocast"),
    ):
        ours, theirs = by_name[f"bts_jax {dtype}"], by_name[torch_row]
        assert theirs["ratio"] == 1.0
        assert ours["ratio"] == pytest.approx(ours["median"] / theirs["median"])


def test_torch_autocast_step_runs_in_bfloat16(vs, built, monkeypatch):
    import torch_unet

    _, batch, _, _, twin = built
    seen = []
    loss = torch_unet.segmentation_loss
    monkeypatch.setattr(
        torch_unet, "segmentation_loss", lambda y, m: seen.append(y.dtype) or loss(y, m)
    )
    for dtype in ("float32", "bfloat16"):
        impl = vs.step_impls.torch_impl(twin, batch, compile_model=False, dtype=dtype)
        assert impl.dtype == dtype
        impl.run(1)
    assert impl.name == "torch eager bfloat16 autocast"
    # The logits reaching the loss: float32, then bfloat16 from the autocast convolutions.
    assert [str(d) for d in seen] == ["torch.float32", "torch.bfloat16"]
