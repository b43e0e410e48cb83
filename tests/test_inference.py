"""Inference tests: checkpoint loading, predictions at any size, files, comparison, entry scripts.

One tiny workdir is trained once for the module (configs/test.py, one epoch) and shared. The three
entry scripts start as subprocesses as soon as it exists and run while the in-process tests do;
their own tests only wait for them.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import copy_workdir, running_scripts, start_scripts_early_if_selected
from PIL import Image

from bts_jax import data as data_lib
from bts_jax import inference, sharding
from bts_jax import workdir as workdir_lib
from bts_jax.inference import compare
from bts_jax.inference import predict as predict_lib
from bts_jax.train import optim
from bts_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(data_lib.SAMPLE_DIR, "images")


def _sample(name: str) -> str:
    return os.path.join(SAMPLE_IMAGES, name)


def _first_sample() -> str:
    return _sample(sorted(os.listdir(SAMPLE_IMAGES))[0])


@pytest.fixture(scope="module")
def workdir(trained_workdir, tmp_path_factory):
    # A copy: the scripts fixture removes a file of it.
    return copy_workdir(trained_workdir, tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module", autouse=True)
def _scripts_started_with_the_first_test(request):
    start_scripts_early_if_selected(request)


@pytest.fixture(scope="module")
def scripts(workdir, tmp_path_factory):
    """The three entry scripts, started at once on the trained workdir (mostly compile time)."""
    out = tmp_path_factory.mktemp("scripts")
    # train_and_evaluate wrote it too: remove it so the test sees evaluate.py write it again.
    os.remove(os.path.join(workdir, "eval_validation.json"))
    commands = {
        "evaluate": ["evaluate.py", f"--workdir={workdir}"],
        "predict": [
            "predict.py",
            f"--workdir={workdir}",
            f"--inputs={_sample('10.png')},{_sample('11.png')}",
            f"--output_dir={out / 'predictions'}",
        ],
        "compare": [
            "compare.py",
            f"--workdir_a={workdir}",
            f"--workdir_b={workdir}",
            f"--output={out / 'compare.png'}",
            "--num_images=2",
            "--names=U-Net,Improved U-Net",
        ],
    }
    with running_scripts(commands, out, cwd=REPO) as procs:
        yield procs, out


# ----------------------------------------------------------------------------- loading
# (bts_jax.workdir checkpoints: tested here because these need the module's trained workdir)


def test_load_config_and_missing_workdir_errors(workdir, tmp_path):
    config = workdir_lib.load_config(workdir)
    assert config.model.features == (4, 8, 16, 32)
    assert config.data.image_size == 32
    with pytest.raises(FileNotFoundError, match="not a bts_jax workdir"):
        workdir_lib.load_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="Workdir not found"):
        workdir_lib.load_config(tmp_path / "nope")
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), untrained)
    with pytest.raises(FileNotFoundError, match=f"No checkpoint in {untrained}"):
        workdir_lib.load_trained_model(untrained)
    with pytest.raises(ValueError, match="which="):
        workdir_lib.load_trained_model(workdir, which="last")


def test_load_trained_model_restores_the_checkpoint(workdir):
    config, model, variables = workdir_lib.load_trained_model(workdir)
    # The oracle: train_lib's own restore, into an abstract TrainState (no compile, no data).
    optimizer = optim.create_optimizer(config.optimizer, optax.constant_schedule(1e-4))
    abstract = jax.eval_shape(
        lambda: state_lib.create_train_state(config, model, optimizer, sharding.make_mesh())
    )
    latest, best = workdir_lib.checkpoint_managers(workdir, config)
    state, _ = workdir_lib.restore_checkpoint(best, abstract)
    assert int(state.step) == 6
    chex.assert_trees_all_equal(variables["params"], state.params)
    chex.assert_trees_all_equal(variables["batch_stats"], state.batch_stats)
    # One epoch: the latest checkpoint is the best one.
    _, _, latest_variables = workdir_lib.load_trained_model(workdir, which="latest")
    chex.assert_trees_all_equal(latest_variables, variables)
    latest.close()
    best.close()


# ----------------------------------------------------------------------------- predict_masks


def _shifted_model(workdir):
    """The trained model with its output bias moved so that about half the pixels are tumour.

    One epoch predicts background everywhere, which would make every mask comparison trivial.
    """
    config, model, variables = workdir_lib.load_trained_model(workdir)
    image = data_lib.load_grayscale(_first_sample())
    x = data_lib.preprocess_image(image, config.data)[None]
    logits = model.apply(variables, x, train=False)
    params = jax.tree_util.tree_map(lambda p: p, variables["params"])
    params["head"]["bias"] = params["head"]["bias"] - jnp.median(logits)
    return config, model, {"params": params, "batch_stats": variables["batch_stats"]}


def _images():
    rng = np.random.default_rng(0)
    gray = data_lib.load_grayscale(_first_sample())
    return [
        rng.integers(0, 256, (32, 32), dtype=np.uint8),
        np.asarray(Image.fromarray(gray).resize((56, 40))),  # (H, W) = (40, 56)
        gray,  # 512 x 512
        rng.integers(0, 256, (70, 20, 1), dtype=np.uint8),
    ]


@pytest.mark.slow
def test_predict_masks_sizes_values_and_batch_independence(workdir):
    config, model, variables = _shifted_model(workdir)
    images = _images()
    before = predict_lib._forward._cache_size()
    masks = inference.predict_masks(model, variables, images, config.data, batch_size=3)
    # Two batches (3 + 1 padded): at most one new compilation.
    assert predict_lib._forward._cache_size() - before <= 1
    assert [m.shape for m in masks] == [(32, 32), (40, 56), (512, 512), (70, 20)]
    for mask in masks:
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
    assert 0.05 < masks[2].mean() < 0.95  # the shifted bias makes a non-trivial mask
    # Alone or in a batch: the same mask (eval-mode BatchNorm does not mix images).
    for image, mask in zip(images, masks, strict=True):
        (alone,) = inference.predict_masks(model, variables, [image], config.data, batch_size=3)
        np.testing.assert_array_equal(alone, mask)
    # An RGB array of equal channels is the gray image.
    rgb = np.repeat(images[2][..., None], 3, axis=-1)
    (from_rgb,) = inference.predict_masks(model, variables, [rgb], config.data, batch_size=3)
    np.testing.assert_array_equal(from_rgb, masks[2])


@pytest.mark.slow
def test_predict_masks_matches_a_direct_forward(workdir):
    config, model, variables = _shifted_model(workdir)
    images = _images()
    for method in ("resize", "pad"):
        data_config = config.data.copy_and_resolve_references()
        data_config.resize_method = method
        masks = inference.predict_masks(model, variables, images, data_config)
        for image, mask in zip(images, masks, strict=True):
            assert mask.shape == image.shape[:2]
            x = data_lib.preprocess_image(image, data_config)[None]
            logits = np.asarray(model.apply(variables, x, train=False))[0, ..., 0]
            expected = data_lib.restore_original_size(
                (logits > 0).astype(np.uint8), image.shape[:2], data_config
            )
            # Ignore pixels whose logit is within rounding of the threshold.
            clear = np.abs(data_lib.restore_original_size(logits, image.shape[:2], data_config))
            clear = clear > 1e-4
            np.testing.assert_array_equal(mask[clear], expected[clear])


def test_predict_masks_rejects_bad_images(workdir):
    config, model, variables = workdir_lib.load_trained_model(workdir)
    with pytest.raises(ValueError, match=r"images\[1\] must be uint8"):
        inference.predict_masks(
            model, variables, [np.zeros((8, 8), np.uint8), np.zeros((8, 8))], config.data
        )
    with pytest.raises(ValueError, match=r"images\[0\]"):
        inference.predict_masks(model, variables, [np.zeros((2, 8, 8), np.uint8)], config.data)


def test_predicts_without_the_training_data(workdir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    with open(moved / "config.json") as f:
        config = json.load(f)
    config["data"].update(source="folder", data_dir=str(tmp_path / "no_such_dataset"))
    with open(moved / "config.json", "w") as f:
        json.dump(config, f)
    written = inference.predict_files(moved, _first_sample(), tmp_path / "out")
    assert len(written) == 2 and all(os.path.isfile(p) for p in written)


# ----------------------------------------------------------------------------- predict_files


def test_predict_files_writes_masks_and_overlays(workdir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    gray = data_lib.load_grayscale(_first_sample())
    Image.fromarray(gray).convert("RGB").save(inputs / "rgb.png")
    Image.fromarray(gray).resize((56, 40)).save(inputs / "small.jpg")
    Image.fromarray(gray[:300, :200]).save(inputs / "crop.tif")
    (inputs / "notes.txt").write_text("not an image")  # ignored: not an image extension
    out = tmp_path / "out"
    written = inference.predict_files(workdir, [str(inputs)], out)
    stems = ["crop", "rgb", "small"]
    assert written == [str(out / f"{s}_{kind}.png") for s in stems for kind in ("mask", "overlay")]
    sizes = {"crop": (200, 300), "rgb": (512, 512), "small": (56, 40)}  # PIL (W, H)
    for stem in stems:
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.format == "PNG" and mask.mode == "L" and mask.size == sizes[stem]
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.format == "PNG" and overlay.mode == "RGB"
            assert overlay.size == sizes[stem]


def test_predict_files_errors_name_the_file(workdir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(_first_sample(), inputs / "good.png")
    (inputs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"bad\.png") as error:
        inference.predict_files(workdir, inputs, out)
    assert "good.png" not in str(error.value)
    assert not out.exists()  # failed before predicting anything
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        inference.predict_files(workdir, tmp_path / "no_such_folder", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"No image files .* in {empty}"):
        inference.predict_files(workdir, empty, out)
    with pytest.raises(ValueError, match="would both write good_mask.png"):
        inference.predict_files(workdir, [inputs / "good.png", _first_sample(), inputs], out)


# ----------------------------------------------------------------------------- compare


def test_compare_workdirs_writes_the_figure_and_warns_on_split_mismatch(workdir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    with open(other / "config.json") as f:
        config = json.load(f)
    config["data"]["split_gap"] = 1
    with open(other / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.warns(UserWarning, match="split_gap"):
        path = compare.compare_workdirs(
            workdir, other, tmp_path / "fig" / "compare.png", num_images=3, names=["A", "B"]
        )
    with Image.open(path) as figure:
        assert figure.format == "PNG"
        assert figure.size == (1000, 750)  # 4 columns x 3 rows of 250-pixel panels
    with pytest.raises(ValueError, match="num_images"):
        compare.compare_workdirs(workdir, other, tmp_path / "x.png", num_images=0)


# ----------------------------------------------------------------------------- entry scripts


@pytest.mark.slow
def test_evaluate_script(workdir, scripts):
    procs, _ = scripts
    output = procs["evaluate"].successful_output()
    saved = os.path.join(os.path.abspath(workdir), "eval_validation.json")
    assert f"Saved {saved}" in output
    with open(saved) as f:
        result = json.load(f)
    assert result["step"] == 6 and result["num_images"] == 12
    assert re.search(rf"\n\s+miou\s+{result['miou']:.4f}\n", output), output


@pytest.mark.slow
def test_predict_script(scripts):
    procs, out = scripts
    output = procs["predict"].successful_output()
    assert f"Wrote 2 masks and 2 overlays to {out / 'predictions'}" in output
    assert sorted(os.listdir(out / "predictions")) == [
        "10_mask.png",
        "10_overlay.png",
        "11_mask.png",
        "11_overlay.png",
        inference.SETTINGS_FILE,
    ]


@pytest.mark.slow
def test_compare_script(scripts):
    procs, out = scripts
    output = procs["compare"].successful_output()
    assert f"Wrote {out / 'compare.png'}" in output
    with Image.open(out / "compare.png") as figure:
        assert figure.size == (1000, 500)


# ----------------------------------------------------------------------------- unreadable inputs


def _inputs_with_broken_files(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(_first_sample(), inputs / "good.png")
    (inputs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with open(_first_sample(), "rb") as f:
        (inputs / "truncated.png").write_bytes(f.read()[:300])
    (inputs / "text.jpg").write_text("hello")
    return inputs


def test_unreadable_inputs_are_named_with_the_reason_only(tmp_path):
    inputs = _inputs_with_broken_files(tmp_path)
    found = inference.unreadable_inputs(sorted(str(p) for p in inputs.iterdir()))
    assert found == {
        str(inputs / "bad.png"): "Invalid PNG. Failed to initialize decoder.",
        str(inputs / "text.jpg"): (
            "Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required."
        ),
        str(inputs / "truncated.png"): "Invalid PNG data, size 300",
    }


@pytest.mark.slow
def test_one_unreadable_file_fails_fast_or_is_skipped_on_request(workdir, tmp_path):
    inputs = _inputs_with_broken_files(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(inference.UnreadableInputsError) as error:
        inference.predict_files(workdir, inputs, out)
    message = str(error.value)
    assert f"{inputs / 'truncated.png'}: Invalid PNG data, size 300" in message
    assert "function_node" not in message and "[Op:" not in message
    assert "Cannot read 3 of 4 input(s), nothing was predicted" in message
    assert not out.exists() and error.value.written == []

    with pytest.raises(inference.UnreadableInputsError) as error:
        inference.predict_files(workdir, inputs, out, skip_unreadable=True)
    assert "Cannot read 3 of 4 input(s), skipped; the other 1 were predicted" in str(error.value)
    assert sorted(error.value.unreadable) == sorted(
        str(inputs / name) for name in ("bad.png", "text.jpg", "truncated.png")
    )
    assert error.value.written == [str(out / "good_mask.png"), str(out / "good_overlay.png")]
    # prediction_settings.json records how the written masks were made (see predict_files).
    assert sorted(os.listdir(out)) == [
        "good_mask.png",
        "good_overlay.png",
        "prediction_settings.json",
    ]


@pytest.mark.slow
def test_predict_script_skip_unreadable_lists_the_skipped_files_and_fails(workdir, tmp_path):
    inputs = _inputs_with_broken_files(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "predict.py",
            f"--workdir={workdir}",
            f"--inputs={inputs}",
            f"--output_dir={tmp_path / 'out'}",
            "--skip_unreadable",
        ],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"Wrote 1 masks and 1 overlays to {tmp_path / 'out'}" in done.stdout
    assert f"{inputs / 'bad.png'}: Invalid PNG. Failed to initialize decoder." in done.stderr
    assert "Traceback" not in done.stderr and "function_node" not in done.stderr
