"""Tests of probabilities, TTA, ensembles, post-processing and their evaluation, on a trained model.

One tiny workdir is trained once for the module (configs/test.py, one epoch) and copied to make a
second ensemble member. The entry scripts start as subprocesses as soon as it exists.
"""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import copy_workdir, running_scripts, start_scripts_early_if_selected
from PIL import Image

from bts_jax import data as data_lib
from bts_jax import evaluation, inference
from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.inference import scoring

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(data_lib.SAMPLE_DIR, "images")


@pytest.fixture(scope="module")
def workdirs(trained_workdir, tmp_path_factory):
    """A trained workdir and a copy of it (an ensemble of two identical members)."""
    path = copy_workdir(trained_workdir, tmp_path_factory.mktemp("extras"))
    copy = str(tmp_path_factory.mktemp("extras") / "copy")
    shutil.copytree(path, copy)
    return path, copy


@pytest.fixture(scope="module", autouse=True)
def _scripts_started_with_the_first_test(request):
    start_scripts_early_if_selected(request)


@pytest.fixture(scope="module")
def scripts(workdirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("scripts")
    a, b = workdirs
    commands = {
        "predict": [
            "predict.py",
            f"--workdir={a},{b}",
            f"--inputs={os.path.join(SAMPLE_IMAGES, '10.png')}",
            f"--output_dir={out / 'predictions'}",
            "--tta",
            "--keep_largest",
            "--save_probabilities=npy",
        ],
        "evaluate": [
            "evaluate.py",
            f"--workdir={a},{b}",
            "--tta",
            "--min_size=3",
            f"--output_dir={out / 'eval'}",
        ],
        "benchmark": ["benchmarks/postprocess_effect.py", f"--workdir={a}", "--min_sizes=3"],
    }
    with running_scripts(commands, out, cwd=REPO) as procs:
        yield procs, out


def _images():
    rng = np.random.default_rng(0)
    gray = data_lib.load_grayscale(os.path.join(SAMPLE_IMAGES, "10.png"))
    return [
        gray,  # 512 x 512
        np.asarray(Image.fromarray(gray).resize((56, 40))),  # (H, W) = (40, 56)
        rng.integers(0, 256, (30, 20, 1), dtype=np.uint8),
    ]


def _median_probability(probabilities) -> float:
    # One epoch is far from a tumour detector: a threshold at the median makes masks non-trivial.
    return float(np.median(np.concatenate([p.ravel() for p in probabilities])))


# ----------------------------------------------------------------------------- probabilities


def test_probabilities_sizes_and_masks(workdirs):
    config, members = inference.load_members(workdirs[0])
    images = _images()
    probabilities = inference.predict_probabilities(members, images, config.data, batch_size=2)
    assert [p.shape for p in probabilities] == [(512, 512), (40, 56), (30, 20)]
    for p in probabilities:
        assert p.dtype == np.float32 and p.min() >= 0.0 and p.max() <= 1.0
    # predict_masks is the 0.5 threshold of the same probabilities.
    model, variables = members[0]
    masks = inference.predict_masks(model, variables, images, config.data)
    for p, mask in zip(probabilities, masks, strict=True):
        np.testing.assert_array_equal(mask, (p > 0.5).astype(np.uint8))
    # Settings: threshold and clean-up apply to the probabilities of the chosen TTA.
    threshold = _median_probability(probabilities)
    settings = inference.PredictionSettings(tta="flips", threshold=threshold, keep_largest=True)
    tta = inference.predict_probabilities(members, images, config.data, tta="flips")
    masks = inference.predict_masks(model, variables, images, config.data, settings=settings)
    for p, mask in zip(tta, masks, strict=True):
        np.testing.assert_array_equal(mask, settings.to_mask(p))
    assert masks[0].any()
    assert not np.allclose(tta[0], probabilities[0], atol=1e-4)  # the model is not symmetric


@pytest.mark.slow
def test_ensemble_averages_the_members(workdirs):
    config, ((model, variables),) = inference.load_members(workdirs[0])
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["head"]["bias"] = params["head"]["bias"] + 1.5
    shifted = (model, {"params": params, "batch_stats": variables["batch_stats"]})
    images = _images()
    single = [
        inference.predict_probabilities([m], images, config.data, tta="flips")
        for m in ((model, variables), shifted)
    ]
    both = inference.predict_probabilities(
        [(model, variables), shifted], images, config.data, tta="flips"
    )
    for a, b, mean in zip(*single, both, strict=True):
        np.testing.assert_allclose(mean, (a + b) / 2, atol=1e-6)
        assert not np.allclose(a, b, atol=1e-3)
    # Two workdirs of the same model: the same probabilities as one.
    _, members = inference.load_members(list(workdirs))
    assert len(members) == 2
    twice = inference.predict_probabilities(members, images, config.data, tta="flips")
    for a, p in zip(single[0], twice, strict=True):
        np.testing.assert_allclose(p, a, atol=1e-6)


@pytest.mark.parametrize(
    "setting,value",
    [("data.image_size", 64), ("data.equalize", False), ("model.num_classes", 3)],
)
def test_ensemble_of_different_preprocessing_is_refused(workdirs, tmp_path, setting, value):
    other = tmp_path / "other"
    shutil.copy(os.path.join(workdirs[0], "config.json"), tmp_path / "config.json")
    other.mkdir()
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    section, key = setting.split(".")
    config[section][key] = value
    with open(other / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=rf"config\.{setting} \({workdirs[0]}: .*, {other}: "):
        inference.load_members([workdirs[0], str(other)])
    with pytest.raises(ValueError, match="listed twice"):
        inference.load_members([workdirs[0], workdirs[0]])


# ----------------------------------------------------------------------------- predict_files


@pytest.mark.slow
def test_predict_files_saves_probabilities_and_settings(workdirs, tmp_path):
    source = os.path.join(SAMPLE_IMAGES, "10.png")
    settings = inference.PredictionSettings(tta="dihedral", threshold=0.3, min_size=5)
    written = {}
    for file_format in ("npy", "png"):
        out = tmp_path / file_format
        written[file_format] = inference.predict_files(
            list(workdirs), source, out, settings=settings, save_probabilities=file_format
        )
        assert written[file_format] == [
            str(out / "10_mask.png"),
            str(out / "10_overlay.png"),
            str(out / f"10_prob.{file_format}"),
        ]
    probabilities = np.load(tmp_path / "npy" / "10_prob.npy")
    assert probabilities.shape == (512, 512) and probabilities.dtype == np.float32
    with Image.open(tmp_path / "png" / "10_prob.png") as png:
        levels = np.asarray(png)
    assert levels.shape == (512, 512) and levels.max() > 0
    np.testing.assert_allclose(levels / 65535.0, probabilities, atol=1e-5)
    with Image.open(tmp_path / "npy" / "10_mask.png") as mask:
        np.testing.assert_array_equal(np.asarray(mask), settings.to_mask(probabilities) * 255)
    with open(tmp_path / "npy" / inference.SETTINGS_FILE) as f:
        record = json.load(f)
    assert record["tta"] == "dihedral" and record["threshold"] == 0.3
    assert record["min_size"] == 5 and record["keep_largest"] is False
    assert record["save_probabilities"] == "npy"
    assert [m["workdir"] for m in record["members"]] == [os.path.abspath(w) for w in workdirs]
    assert record["members"][0]["step"] == 6
    assert record["preprocessing"] == {
        "image_size": 32,
        "equalize": True,
        "resize_method": "resize",
        "num_classes": 1,
    }
    with pytest.raises(ValueError, match="save_probabilities='tif'"):
        inference.predict_files(workdirs[0], source, tmp_path / "x", save_probabilities="tif")


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_plain_settings_score_like_the_checkpoint_evaluation(workdirs):
    path = workdirs[0]
    config = workdir_lib.load_config(path)
    expected = train_lib.evaluate_checkpoint(config, path, "validation")
    found = scoring.evaluate_predictions(path, "validation")
    for key in ("miou", "dice", "dice_per_image", "hd95_px", "num_images", "num_both_empty"):
        np.testing.assert_allclose(found.metrics[key], expected[key], rtol=1e-6, err_msg=key)
    assert "loss" not in found.metrics and len(found.per_image) == 12


@pytest.mark.slow
def test_ensemble_tta_and_postprocessing_evaluation(workdirs, tmp_path):
    config, members = inference.load_members(workdirs[0])
    pipeline = train_lib.make_input_pipeline(config)
    batch = next(iter(pipeline.eval_batches("validation")))
    threshold = _median_probability([inference.batch_probabilities(members, batch["image"])])
    settings = inference.PredictionSettings(tta="flips", threshold=threshold)
    largest_settings = inference.PredictionSettings("flips", threshold, keep_largest=True)
    # Two settings in one pass score as each alone.
    single, largest = scoring.evaluate_settings(workdirs[0], [settings, largest_settings])
    alone = scoring.evaluate_predictions(workdirs[0], settings=largest_settings)
    np.testing.assert_equal(alone.metrics, largest.metrics)
    np.testing.assert_equal(alone.per_image, largest.per_image)
    ensemble = scoring.evaluate_predictions(list(workdirs), settings=settings)
    assert 0.0 < single.metrics["dice"] < 1.0  # a non-trivial prediction
    for key in ("miou", "dice", "dice_per_image", "boundary_iou"):
        np.testing.assert_allclose(ensemble.metrics[key], single.metrics[key], rtol=1e-6)
    # Keeping the largest component only removes predicted pixels.
    for before, after in zip(single.per_image, largest.per_image, strict=True):
        assert after["id"] == before["id"] and after["pred_pixels"] <= before["pred_pixels"]
    assert sum(r["pred_pixels"] for r in largest.per_image) < sum(
        r["pred_pixels"] for r in single.per_image
    )
    json_path, csv_path = scoring.write_prediction_evaluation(
        ensemble, list(workdirs), "validation", which="best", settings=settings, output_dir=tmp_path
    )
    tag = f"ensemble2_tta-flips_t{threshold:g}"
    assert json_path == str(tmp_path / f"eval_validation_{tag}.json")
    assert csv_path == str(tmp_path / f"per_image_validation_{tag}.csv")
    with open(json_path) as f:
        record = json.load(f)
    assert record["dice"] == pytest.approx(ensemble.metrics["dice"])
    assert record["prediction"]["tta"] == "flips" and len(record["prediction"]["members"]) == 2


def test_settings_tag_and_leakage_warning(workdirs, tmp_path):
    tag = scoring.settings_tag
    assert tag(1, inference.PredictionSettings()) == "plain"
    assert tag(3, inference.PredictionSettings("dihedral", 0.5, True, 20)) == (
        "ensemble3_tta-dihedral_largest_min20"
    )
    with open(os.path.join(workdirs[0], "data_split.json")) as f:
        validation = json.load(f)["validation"]
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    with open(leaky / "data_split.json", "w") as f:
        json.dump({"train": validation[:3], "validation": []}, f)
    with pytest.warns(UserWarning, match=f"{leaky} trained on 3 of the 12 evaluated images"):
        scoring.warn_on_leakage([workdirs[0], str(leaky)], validation)


# ----------------------------------------------------------------------------- entry scripts


@pytest.mark.slow
def test_predict_script_with_ensemble_tta_and_postprocessing(scripts):
    procs, out = scripts
    output = procs["predict"].successful_output()
    assert f"Wrote 1 masks and 1 overlays and 1 probability maps to {out / 'predictions'}" in output
    assert sorted(os.listdir(out / "predictions")) == [
        "10_mask.png",
        "10_overlay.png",
        "10_prob.npy",
        inference.SETTINGS_FILE,
    ]
    with open(out / "predictions" / inference.SETTINGS_FILE) as f:
        record = json.load(f)
    assert record["tta"] == "flips" and record["keep_largest"] is True
    assert len(record["members"]) == 2


@pytest.mark.slow
def test_evaluate_script_with_an_ensemble(scripts):
    procs, out = scripts
    output = procs["evaluate"].successful_output()
    saved = out / "eval" / "eval_validation_ensemble2_tta-flips_min3.json"
    assert f"Saved {saved}" in output
    with open(saved) as f:
        record = json.load(f)
    assert record["num_images"] == 12 and record["prediction"]["min_size"] == 3
    assert re.search(rf"\n\s+dice_per_image\s+{record['dice_per_image']:.4f}\n", output), output


@pytest.mark.slow
def test_postprocess_effect_benchmark(scripts):
    procs, _ = scripts
    output = procs["benchmark"].successful_output()
    for row in ("| plain |", "| TTA flips (4 views) |", "| min_size 3 |", "(12 images)"):
        assert row in output, output[-2000:]


@pytest.mark.slow
def test_evaluate_folder_scores_each_image_at_its_own_size(workdirs, tmp_path):
    folder = tmp_path / "labelled"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    ids = ["10", "11", "1203"]  # two 512x512 slices and one 256x256
    for image_id in ids:
        for sub in ("images", "masks"):
            shutil.copy(os.path.join(data_lib.SAMPLE_DIR, sub, f"{image_id}.png"), folder / sub)
    run, _ = workdirs
    found, labels = scoring.evaluate_folder(run, folder)
    assert [row["id"] for row in found.per_image] == ids
    assert labels == {i: 0 for i in ids}  # no metadata.csv: unknown type
    # Oracle: predict_masks at each image's own size, scored by hand with the evaluator.
    config, model, variables = workdir_lib.load_trained_model(run)
    images = [data_lib.load_grayscale(folder / "images" / f"{i}.png") for i in ids]
    truths = [(data_lib.load_grayscale(folder / "masks" / f"{i}.png") > 127) for i in ids]
    masks = inference.predict_masks(model, variables, images, config.data)
    evaluator = evaluation.SegmentationEvaluator(1)
    for mask, truth in zip(masks, truths, strict=True):
        pred, gt = mask[None].astype(np.int32), truth[None].astype(np.int32)
        evaluator.update(evaluation.confusion_matrix(pred, gt, 1), pred, gt)
    for key, value in evaluator.result().items():
        np.testing.assert_allclose(found.metrics[key], value, err_msg=key)
    assert found.per_image[2]["truth_pixels"] == int(truths[2].sum())  # at 256x256, not 32x32
    json_path, csv_path = scoring.write_prediction_evaluation(
        found,
        [run],
        "folder",
        which="best",
        settings=inference.PredictionSettings(),
        output_dir=tmp_path / "out",
        labels=labels,
    )
    assert json_path == str(tmp_path / "out" / "eval_folder_plain.json")
    assert csv_path == str(tmp_path / "out" / "per_image_folder_plain.csv")
    assert os.path.isfile(csv_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scoring.evaluate_folder(run, tmp_path / "nowhere")
