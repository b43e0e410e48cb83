"""Export tests: the jax.export artifact and the TF SavedModel reproduce predict_masks.

One tiny workdir is trained once for the module (configs/test.py, one epoch); its head bias is
shifted in a copy so that about half the pixels are tumour (one epoch predicts background
everywhere, which would make every mask comparison trivial). export.py and the throughput
benchmark run as subprocesses.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import running_scripts

from bts_jax import data as data_lib
from bts_jax import inference
from bts_jax import workdir as workdir_lib
from bts_jax.inference import export

# SavedModel and TFLite conversions of a trained workdir: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(data_lib.SAMPLE_DIR, "images")


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return trained_workdir


@pytest.fixture(scope="module")
def scripts(workdir, tmp_path_factory):
    """export.py and the throughput benchmark, started at once on the trained workdir."""
    out = tmp_path_factory.mktemp("script") / "exported"
    commands = {
        "export": ["export.py", f"--workdir={workdir}", f"--output={out}", "--tta", "--tflite"],
        "benchmark": [
            "benchmarks/export_throughput.py",
            f"--workdir={workdir}",
            "--num_images=3",
            "--batch_size=2",
            "--repeats=1",
        ],
    }
    with running_scripts(commands, out.parent, cwd=REPO) as procs:
        yield procs, out


def _images() -> list[np.ndarray]:
    """The bundled images (512 x 512) and two of other sizes."""
    names = sorted(os.listdir(SAMPLE_IMAGES))[:5]
    images = [data_lib.load_grayscale(os.path.join(SAMPLE_IMAGES, n)) for n in names]
    rng = np.random.default_rng(0)
    return images + [rng.integers(0, 256, (40, 56), np.uint8), images[0][:300, :200]]


@pytest.fixture(scope="module")
def shifted(workdir):
    """The trained model with its output bias at the median logit of the images, in memory."""
    config, model, variables = workdir_lib.load_trained_model(workdir)
    x = np.stack([data_lib.preprocess_image(i, config.data) for i in _images()[:5]])
    logits = np.asarray(model.apply(variables, x, train=False))
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["head"]["bias"] = params["head"]["bias"] - np.median(logits)
    return config, model, {"params": params, "batch_stats": variables["batch_stats"]}


def _write_export(config, members, directory, tta="none"):
    """What export_workdirs writes, for in-memory members (the shifted model)."""
    size = int(config.data.image_size)
    directory.mkdir()
    exported = export.export_probabilities(members, size, tta=tta)
    (directory / export.EXPORT_FILE).write_bytes(exported.serialize())
    settings = {
        "image_size": size,
        "equalize": True,
        "resize_method": "resize",
        "num_classes": 1,
        "threshold": 0.5,
    }
    (directory / export.SETTINGS_FILE).write_text(json.dumps(settings))
    return directory


def test_exported_model_reproduces_predict_masks(shifted, tmp_path):
    config, model, variables = shifted
    images = _images()
    loaded = export.load_exported(_write_export(config, [(model, variables)], tmp_path / "e"))
    assert loaded.exported.platforms == ("cpu", "cuda")
    assert str(loaded.exported.in_avals[0].shape[0]) == "b"  # symbolic batch
    expected_masks = inference.predict_masks(model, variables, images, config.data)
    expected = inference.predict_probabilities([(model, variables)], images, config.data)
    assert 0.05 < expected_masks[0].mean() < 0.95  # a non-trivial mask
    for batch_size in (1, 5):
        masks = loaded.predict_masks(images, batch_size=batch_size)
        probabilities = loaded.predict_probabilities(images, batch_size=batch_size)
        for got, want, mask, want_mask in zip(
            probabilities, expected, masks, expected_masks, strict=True
        ):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-5)
            np.testing.assert_array_equal(mask, want_mask)
    # Post-processing is applied on top of the recorded threshold.
    (largest,) = loaded.predict_masks(images[:1], keep_largest=True)
    np.testing.assert_array_equal(
        largest, inference.PredictionSettings(keep_largest=True).to_mask(expected[0])
    )


def test_exported_ensemble_with_tta(shifted, tmp_path):
    config, model, variables = shifted
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["head"]["bias"] = params["head"]["bias"] + 1.0
    members = [(model, variables), (model, {**variables, "params": params})]
    images = _images()[:3]
    loaded = export.load_exported(_write_export(config, members, tmp_path / "e", tta="dihedral"))
    expected = inference.predict_probabilities(members, images, config.data, tta="dihedral")
    for got, want in zip(loaded.predict_probabilities(images, batch_size=2), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_model_set_to_onednn_exports_with_xla_convolutions(shifted):
    # An artifact must run anywhere, and jax.export refuses the oneDNN extension's custom calls;
    # here (8 devices) tracing with conv_impl="onednn" would itself raise.
    config, model, variables = shifted
    size = int(config.data.image_size)
    onednn = export.export_probabilities([(model.clone(conv_impl="onednn"), variables)], size)
    xla = export.export_probabilities([(model.clone(conv_impl="xla"), variables)], size)
    assert "bts_onednn" not in onednn.mlir_module()
    x = np.random.default_rng(0).random((2, size, size, 1), np.float32)
    np.testing.assert_array_equal(np.asarray(onednn.call(x)), np.asarray(xla.call(x)))


def test_saved_model_reproduces_the_probabilities(shifted, tmp_path):
    config, model, variables = shifted
    size = int(config.data.image_size)
    path = export.save_saved_model([(model, variables)], size, tmp_path / "saved")
    loaded = tf.saved_model.load(path)
    images = _images()
    x = np.stack([data_lib.preprocess_image(i, config.data) for i in images])
    want = inference.batch_probabilities([(model, variables)], x)
    for batch in (x[:1], x[:5]):
        got = loaded.probabilities(tf.constant(batch)).numpy()
        np.testing.assert_allclose(got, want[: len(batch)], atol=1e-5)
        served = loaded.signatures["serving_default"](images=tf.constant(batch))
        np.testing.assert_allclose(served["probabilities"].numpy(), got, atol=0)
    # Masks from the SavedModel's probabilities are predict_masks's.
    masks = inference.predict_masks(model, variables, images[:5], config.data)
    for p, mask, image in zip(want[:5], masks, images, strict=False):
        restored = data_lib.restore_original_size(p[..., 0], image.shape, config.data)
        np.testing.assert_array_equal((restored > 0.5).astype(np.uint8), mask)


def test_load_exported_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.jax_export not found"):
        export.load_exported(tmp_path)
    (tmp_path / export.EXPORT_FILE).write_bytes(b"")
    (tmp_path / export.SETTINGS_FILE).write_text(json.dumps({"image_size": 32}))
    with pytest.raises(ValueError, match="lacks"):
        export.load_exported(tmp_path)


# tf.lite.Interpreter still ships with TF 2.21 (LiteRT's ai_edge_litert is its successor).
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_tflite_reproduces_the_probabilities(shifted, tmp_path):
    config, model, variables = shifted
    path = export.save_tflite([(model, variables)], 32, tmp_path / "model.tflite", tta="flips")
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    assert list(source["shape"]) == [1, 32, 32, 1] and list(target["shape"]) == [1, 32, 32, 1]
    for image in _images()[:2]:
        x = data_lib.preprocess_image(image, config.data)[None]
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        want = inference.batch_probabilities([(model, variables)], x, "flips")
        np.testing.assert_allclose(interpreter.get_tensor(target["index"]), want, atol=1e-5)


def test_export_script(workdir, scripts):
    procs, out = scripts
    output = procs["export"].successful_output()
    names = (export.EXPORT_FILE, export.SETTINGS_FILE, export.SAVED_MODEL_DIR, export.TFLITE_FILE)
    for name in names:
        assert f"Wrote {out / name}" in output
    with open(out / export.SETTINGS_FILE) as f:
        record = json.load(f)
    assert record["image_size"] == 32 and record["tta"] == "flips"
    assert record["members"] == [
        {"workdir": os.path.abspath(workdir), "which": "best", "step": 6, "weights": "raw"}
    ]
    # Runs from the copied folder alone, and matches the workdir's own TTA prediction.
    moved = out.parent / "moved"
    shutil.copytree(out, moved)
    images = _images()[:2]
    loaded = export.load_exported(moved)
    config, members = inference.load_members(workdir)
    expected = inference.predict_probabilities(members, images, config.data, tta="flips")
    for got, want in zip(loaded.predict_probabilities(images), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_export_throughput_benchmark(scripts):
    procs, _ = scripts
    output = procs["benchmark"].successful_output()
    assert "same masks: True" in output
    assert "| forward only (images/s) |" in output
