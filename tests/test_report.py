"""The sweep report on fake sweep folders (synthetic numbers, no training)."""

import csv
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from bts_jax import config_tools, evaluation
from bts_jax import workdir as workdir_lib
from bts_jax.configs import test as test_config
from bts_jax.experiments import cells, power, provenance, report, results, stats, sweeps
from bts_jax.experiments import claims as claims_lib
from bts_jax.workdir import environment, layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = [str(i) for i in range(101, 113)]  # 12 test images
TYPES = ["1", "2", "3"] * 4
MODELS = {  # the paper's four variants as config overrides
    "unet": {"model.gsconv_in": "", "model.eca_in": ""},
    "eca": {"model.gsconv_in": "", "model.eca_in": "encoder,bottleneck,decoder"},
    "gsconv": {"model.gsconv_in": "encoder,bottleneck,decoder", "model.eca_in": ""},
    "paper": {},
}
SAME = {"dice": 0.0, "miou": 0.70, "bottom": 8}


def _config(overrides, split_method):
    config = test_config.get_config()
    config.data.test_fraction = 0.15
    config.data.split_method = split_method
    for path, value in overrides.items():
        section, field = path.split(".")
        config[section][field] = value
    return json.loads(config.to_json_best_effort())


def _write_cell(path, *, config, rng, shift, miou, bottom, status="done"):
    """One finished cell; returns the numbers written (test metrics and per-image Dice/HD95)."""
    os.makedirs(path, exist_ok=True)
    base = np.linspace(0.5, 0.9, len(IDS))
    dice = np.clip(base + shift + rng.normal(0, 0.01, len(IDS)), 0, 1)
    hd95 = 20.0 * (1.0 - dice) + rng.normal(0, 0.1, len(IDS))
    with open(os.path.join(path, results.PER_IMAGE_FILE), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(evaluation.PER_IMAGE_COLUMNS)
        for i, (image_id, kind) in enumerate(zip(IDS, TYPES, strict=True)):
            writer.writerow(
                [image_id, kind, dice[i], dice[i] * 0.9, hd95[i], hd95[i] * 0.49, dice[i] - 0.1]
                + [50, 48]
            )
    test = {
        "miou": miou + rng.normal(0, 0.005),
        "iou_background": 0.99,
        "iou_tumour": float(dice.mean()) - 0.05,
        "dice": float(dice.mean()),
        "mean_dice": float(dice.mean()),
        "hd95_px": float(hd95.mean()),
        "hd95_mm": float(hd95.mean()) * 0.49,
        "boundary_iou": float(dice.mean()) - 0.1,
        "precision": 0.8,
        "recall": None,  # null in the file: read as NaN
        "loss": 0.3,
        "num_images": len(IDS),
        "step": 100,
    }
    with open(os.path.join(path, results.EVAL_FILE), "w") as f:
        json.dump(test, f)
    with open(os.path.join(path, layout.METRICS_JSONL), "w") as f:
        for epoch in range(1, 21):
            row = {
                "epoch": epoch,
                "step": 5 * epoch,
                "train_loss": 1.0 / epoch,
                "learning_rate": 1e-4,
                "train_images_per_s": 100.0 + epoch + rng.normal(),
            }
            if epoch % 2 == 0 or epoch == bottom:  # validation on some epochs only
                row.update(
                    val_loss=0.3 + 0.02 * abs(epoch - bottom) + rng.uniform(0, 0.001),
                    val_miou=miou * (1 - math.exp(-epoch / 3)),
                    val_dice=0.5,
                )
            f.write(json.dumps(row) + "\n")
    with open(os.path.join(path, layout.CONFIG_FILE), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, sweeps.CELL_FILE), "w") as f:
        json.dump({"status": status, "wall_s": 60.0}, f)
    return {**test, "image_dice": dice, "image_hd95": hd95}


def make_sweep(
    root,
    specs=None,
    *,
    seeds=(0, 1, 2),
    folds=None,
    split_method="blocked",
    paper_model="paper",
):
    """A fake sweep folder; returns {(variant, seed, fold): numbers written}."""
    specs = specs or {name: SAME for name in MODELS}
    definition = {
        "name": "fake",
        "base_config": "configs/test.py",
        "baseline": "unet",
        "variants": {name: MODELS[name] for name in specs},
        "seeds": list(seeds),
        "folds": None if folds is None else list(folds),
    }
    if paper_model:
        definition["paper_model"] = paper_model
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, sweeps.SWEEP_FILE), "w") as f:
        json.dump(definition, f)
    written = {}
    for v, (name, spec) in enumerate(specs.items()):
        for fold in folds or (None,):
            for seed in seeds:
                rng = np.random.default_rng([v, seed, 99 if fold is None else fold])
                written[(name, seed, fold)] = _write_cell(
                    sweeps.cell_dir(str(root), name, seed, fold),
                    config=_config(MODELS[name], split_method),
                    rng=rng,
                    shift=spec["dice"],
                    miou=spec["miou"],
                    bottom=spec["bottom"],
                )
    return written


def _summary(root, **kwargs):
    report.write_report(root, model_stats=False, **kwargs)
    with open(os.path.join(root, report.SUMMARY_JSON)) as f:
        return json.load(f)


def test_tables_and_comparisons_match_numpy_and_scipy(tmp_path):
    specs = {
        "unet": SAME,
        "eca": {"dice": 0.01, "miou": 0.71, "bottom": 8},
        "gsconv": {"dice": -0.02, "miou": 0.69, "bottom": 8},
        "paper": {"dice": 0.03, "miou": 0.74, "bottom": 8},
    }
    written = make_sweep(tmp_path, specs)
    summary = _summary(tmp_path)
    for name in specs:
        dice = np.array([written[(name, s, None)]["dice"] for s in (0, 1, 2)])
        row = summary["variants"][name]
        assert row["n_runs"] == row["n_seeds"] == 3
        got = row["metrics"]["dice"]
        low, high = scipy.stats.t.interval(0.95, 2, loc=dice.mean(), scale=scipy.stats.sem(dice))
        assert got["mean"] == pytest.approx(dice.mean())
        assert got["std"] == pytest.approx(dice.std(ddof=1))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high))
    comparisons = summary["comparisons"]
    assert summary["num_comparisons"] == len(comparisons) == 3 * (4 + 2)  # 3 variants x 6 tests
    by_key = {(c["variant"], c["metric"], c["over"]): c for c in comparisons}
    base_miou = [written[("unet", s, None)]["miou"] for s in (0, 1, 2)]
    paper_miou = [written[("paper", s, None)]["miou"] for s in (0, 1, 2)]
    ttest = scipy.stats.ttest_rel(paper_miou, base_miou)
    row = by_key[("paper", "miou", "seeds")]
    assert row["pvalue"] == pytest.approx(ttest.pvalue) and row["n"] == 3
    assert row["estimate"] == pytest.approx(np.mean(paper_miou) - np.mean(base_miou))
    # Per image: each image's HD95 averaged over the seeds first, then Wilcoxon (zsplit).
    mean_hd = {
        n: np.mean([written[(n, s, None)]["image_hd95"] for s in (0, 1, 2)], 0) for n in specs
    }
    wilcoxon = scipy.stats.wilcoxon(mean_hd["gsconv"] - mean_hd["unet"], zero_method="zsplit")
    row = by_key[("gsconv", "hd95_px", "images")]
    assert row["pvalue"] == pytest.approx(wilcoxon.pvalue) and row["n"] == len(IDS)
    # Holm over all 18: the smallest p is multiplied by 18.
    raw = np.array([c["pvalue"] for c in comparisons])
    smallest = int(np.argmin(raw))
    assert comparisons[smallest]["pvalue_holm"] == pytest.approx(min(1.0, 18 * raw[smallest]))
    np.testing.assert_allclose([c["pvalue_holm"] for c in comparisons], stats.holm(raw))
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "18 comparisons (18 with a p-value); Holm's correction over all 18" in text
    with open(tmp_path / report.SUMMARY_CSV) as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert float(rows["eca"]["miou_mean"]) == pytest.approx(
        summary["variants"]["eca"]["metrics"]["miou"]["mean"]
    )
    images_per_s = []
    for s in (0, 1, 2):
        with open(os.path.join(sweeps.cell_dir(str(tmp_path), "eca", s), "metrics.jsonl")) as f:
            images_per_s += [json.loads(line)["train_images_per_s"] for line in f]
    assert float(rows["eca"]["train_images_per_s"]) == pytest.approx(np.median(images_per_s))


def _claims(summary):
    return {c["id"]: c for c in summary["claims"]}


def test_claims_supported(tmp_path):
    specs = {"unet": SAME, "paper": {"dice": 0.1, "miou": 0.79, "bottom": 8}}
    make_sweep(tmp_path, specs)
    claims = _claims(_summary(tmp_path))
    assert claims["a"]["verdict"] == claims_lib.SUPPORTED
    assert claims["b"]["verdict"] == claims_lib.SUPPORTED  # HD95 lower and boundary IoU higher
    assert claims["c"]["verdict"] == claims_lib.SUPPORTED and claims["c"]["bottom_epoch"] == 8
    assert claims["d"]["verdict"] == claims_lib.SUPPORTED
    assert "split by id blocks" in claims["d"]["details"]


def test_claims_not_supported(tmp_path):
    specs = {"unet": SAME, "paper": {"dice": -0.1, "miou": 0.6, "bottom": 15}}
    make_sweep(tmp_path, specs, split_method="random")
    claims = _claims(_summary(tmp_path))
    assert claims["a"]["verdict"] == claims_lib.NOT_SUPPORTED  # significantly lower
    assert claims["b"]["verdict"] == claims_lib.NOT_SUPPORTED
    assert claims["c"]["verdict"] == claims_lib.NOT_SUPPORTED and claims["c"]["bottom_epoch"] == 15
    assert claims["d"]["verdict"] == claims_lib.NOT_SUPPORTED
    assert "per-slice random" in claims["d"]["details"]


def test_claims_not_significant_for_identical_models(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME})
    # The same numbers for both: copy the baseline's files over the paper model's.
    for seed in (0, 1, 2):
        for name in os.listdir(sweeps.cell_dir(str(tmp_path), "unet", seed)):
            src = os.path.join(sweeps.cell_dir(str(tmp_path), "unet", seed), name)
            dst = os.path.join(sweeps.cell_dir(str(tmp_path), "paper", seed), name)
            if name != layout.CONFIG_FILE:
                with open(src) as f, open(dst, "w") as g:
                    g.write(f.read())
    summary = _summary(tmp_path)
    claims = _claims(summary)
    assert claims["a"]["verdict"] == claims["b"]["verdict"] == claims_lib.NOT_SIGNIFICANT
    for c in summary["comparisons"]:
        assert (c["pvalue"], c["effect"], c["estimate"]) == (1.0, 0.0, 0.0)


def test_verdict_rules():
    assert claims_lib.verdict_from_test(0.02, 0.01, higher_is_better=True) == claims_lib.SUPPORTED
    assert (
        claims_lib.verdict_from_test(0.02, 0.01, higher_is_better=False) == claims_lib.NOT_SUPPORTED
    )
    assert (
        claims_lib.verdict_from_test(-1.0, 0.2, higher_is_better=False)
        == claims_lib.NOT_SIGNIFICANT
    )
    assert (
        claims_lib.verdict_from_test(1.0, math.nan, higher_is_better=True)
        == claims_lib.NOT_SIGNIFICANT
    )
    s, n, x = claims_lib.SUPPORTED, claims_lib.NOT_SIGNIFICANT, claims_lib.NOT_SUPPORTED
    assert claims_lib.combine_verdicts([s, s]) == s
    assert claims_lib.combine_verdicts([s, n]) == n
    assert claims_lib.combine_verdicts([s, x]) == x
    assert claims_lib.combine_verdicts([]) == claims_lib.NO_DATA
    # First epoch within 5% of the minimum, not the minimum itself.
    assert claims_lib.loss_bottom_epoch([1, 2, 3, 4, 5], [1.0, 0.5, 0.31, 0.30, 0.305]) == 3
    assert claims_lib.loss_bottom_epoch([], []) is None


def test_missing_cells_are_listed_not_averaged(tmp_path):
    written = make_sweep(tmp_path, {"unet": SAME, "paper": SAME})
    os.remove(os.path.join(sweeps.cell_dir(str(tmp_path), "paper", 1), sweeps.CELL_FILE))
    with open(os.path.join(sweeps.cell_dir(str(tmp_path), "unet", 2), sweeps.CELL_FILE), "w") as f:
        json.dump({"status": "running"}, f)
    os.remove(os.path.join(sweeps.cell_dir(str(tmp_path), "paper", 2), results.EVAL_FILE))
    summary = _summary(tmp_path)
    missing = {(m["variant"], m["seed"]): m["reason"] for m in summary["missing"]}
    assert missing == {
        ("paper", 1): "no cell.json",
        ("paper", 2): "done but eval_test.json is missing",
        ("unet", 2): "status 'running'",
    }
    paper = summary["variants"]["paper"]
    assert paper["n_runs"] == 1 and paper["metrics"]["miou"]["mean"] == pytest.approx(
        written[("paper", 0, None)]["miou"]
    )
    assert summary["variants"]["unet"]["n_runs"] == 2
    # Paired on the seeds both finished: seed 0 only, so no t-test p-value.
    row = next(c for c in summary["comparisons"] if c["over"] == "seeds")
    assert row["n"] == 1 and row["pvalue"] is None
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "## Missing cells" in text and "paper seed 1: no cell.json" in text


def test_folds_average_per_seed(tmp_path):
    written = make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1), folds=(0, 1, 2))
    assert os.path.isfile(tmp_path / "paper" / "fold_2" / "seed_1" / sweeps.CELL_FILE)
    summary = _summary(tmp_path)
    row = summary["variants"]["paper"]
    assert row["n_runs"] == 6 and row["n_seeds"] == 2
    per_seed = [np.mean([written[("paper", s, k)]["miou"] for k in range(3)]) for s in (0, 1)]
    assert row["metrics"]["miou"]["mean"] == pytest.approx(np.mean(per_seed))
    assert row["metrics"]["miou"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    t = next(c for c in summary["comparisons"] if c["metric"] == "miou")
    base = [np.mean([written[("unet", s, k)]["miou"] for k in range(3)]) for s in (0, 1)]
    assert t["n"] == 2 and t["estimate"] == pytest.approx(np.mean(per_seed) - np.mean(base))


@pytest.mark.slow
def test_figures_and_prediction_hook(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME})
    calls = []

    def prediction_figure(sweep, directory):
        calls.append(sweep.paper_model)
        path = os.path.join(directory, "predictions.png")
        Image.new("RGB", (8, 8)).save(path)
        return path

    paths = report.write_report(tmp_path, model_stats=False, prediction_figure=prediction_figure)
    assert calls == ["paper"]
    for name in (report.dice_figure_file("test"), report.VAL_MIOU_FIGURE):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 300 and image.size[1] > 300
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "](test_dice.png)" in text and "](val_miou.png)" in text
    assert "](predictions.png)" in text and paths["predictions"].endswith("predictions.png")


@pytest.mark.slow
def test_model_stats_per_variant(tmp_path):
    from bts_jax.models import build_model, model_summary

    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0,))
    report.write_report(tmp_path, model_stats=True)
    with open(tmp_path / report.SUMMARY_JSON) as f:
        variants = json.load(f)["variants"]
    config = test_config.get_config()
    paper = model_summary(build_model(config.model), 32)
    config.model.update(gsconv_in="", eca_in="")
    unet = model_summary(build_model(config.model), 32)
    assert variants["paper"]["params"] == paper["params"] != unet["params"]
    assert variants["unet"]["params"] == unet["params"]
    assert variants["unet"]["gflops"] == pytest.approx(unet["gflops_per_image"])


def test_bad_sweep_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep.json"):
        sweeps.load_sweep(tmp_path)
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME})
    with open(tmp_path / sweeps.SWEEP_FILE) as f:
        definition = json.load(f)
    for change, message in [
        ({"baseline": "resnet"}, r"baseline='resnet' is not one of the variants"),
        ({"paper_model": "x"}, "paper_model='x'"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
    ]:
        with open(tmp_path / sweeps.SWEEP_FILE, "w") as f:
            json.dump({**definition, **change}, f)
        with pytest.raises(ValueError, match=message):
            sweeps.load_sweep(tmp_path)
    del definition["variants"]
    with open(tmp_path / sweeps.SWEEP_FILE, "w") as f:
        json.dump(definition, f)
    with pytest.raises(ValueError, match="no 'variants' field"):
        sweeps.load_sweep(tmp_path)


def test_no_paper_model_gives_no_data_claims(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "eca": SAME}, paper_model=None)
    claims = _claims(_summary(tmp_path))
    assert {c["verdict"] for c in claims.values()} == {claims_lib.NO_DATA}


@pytest.mark.slow
def test_cli_writes_the_report(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    result = subprocess.run(
        [sys.executable, "report.py", str(tmp_path), "--nomodel_stats"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in (report.REPORT_FILE, report.SUMMARY_CSV, report.SUMMARY_JSON):
        assert f"Wrote {tmp_path / name}" in result.stdout
    usage = subprocess.run(
        [sys.executable, "report.py"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert usage.returncode != 0 and "Usage: python report.py DIR" in usage.stderr


def test_power_columns_and_seeds_for_a_hundredth(tmp_path):
    written = make_sweep(
        tmp_path, {"unet": SAME, "paper": {"dice": 0.02, "miou": 0.72, "bottom": 8}}
    )
    summary = _summary(tmp_path)
    by_key = {(c["variant"], c["metric"], c["over"]): c for c in summary["comparisons"]}
    row = by_key[("paper", "dice", "seeds")]
    a = [written[("unet", s, None)]["dice"] for s in (0, 1, 2)]
    b = [written[("paper", s, None)]["dice"] for s in (0, 1, 2)]
    level = 0.05 / summary["num_comparisons"]
    assert row["power_alpha"] == pytest.approx(level)
    assert row["detectable"] == pytest.approx(power.detectable_difference(a, b, level))
    assert row["seeds_needed"] == power.pairs_needed(a, b, 0.01, level)
    assert by_key[("paper", "hd95_mm", "seeds")]["seeds_needed"] is None  # not a 0-1 metric
    assert by_key[("paper", "dice", "images")]["detectable"] > 0
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "| detectable | seeds for 0.01 |" in text and "**Power.**" in text


def test_dice_per_tumour_type_pools_each_types_pixels(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    summary = _summary(tmp_path)
    per_seed = []
    for seed in (0, 1):
        table = results.read_per_image(
            os.path.join(sweeps.cell_dir(str(tmp_path), "paper", seed), results.PER_IMAGE_FILE)
        )
        kind = table["tumour_type"] == "2"
        pixels = (table["truth_pixels"] + table["pred_pixels"])[kind]
        per_seed.append((table["dice"][kind] * pixels).sum() / pixels.sum())
    got = summary["variants"]["paper"]["types"]["2"]
    assert got["mean"] == pytest.approx(np.mean(per_seed))
    assert got["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert "## Test Dice per tumour type" in (tmp_path / report.REPORT_FILE).read_text()


def _environment(jax_version="0.10.2", test_hash="abc"):
    return {
        "step": 0,
        "python": "3.11.7",
        "versions": {"jax": jax_version, "numpy": "2.4.6"},
        "devices": {"kinds": ["cpu:cpu"], "count": 1},
        "xla_flags": "",
        "code": {"git_commit": "0123456789abcdef", "git_dirty": False},
        "data": {
            "source": {"examples": 60, "bytes": 10, "sha256": "s" * 64},
            "test": {"examples": 9, "bytes": 5, "sha256": test_hash * 21 + "x"},
        },
    }


def test_environments_are_listed_and_differences_warned(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    for variant in ("unet", "paper"):
        for seed in (0, 1):
            cell = sweeps.cell_dir(str(tmp_path), variant, seed)
            other = variant == "paper" and seed == 1
            record = _environment(jax_version="0.10.3" if other else "0.10.2")
            workdir_lib.write_environment(cell, record)
    summary = _summary(tmp_path)
    environments = summary["provenance"]["environments"]
    assert sorted(len(e["runs"]) for e in environments) == [1, 3]
    assert "1 x cpu:cpu; XLA_FLAGS" in environments[0]["description"]
    # A record that names its CPU model (environment.json since it has a "cpu") shows it.
    assert "1 x cpu:cpu (AMD EPYC 9R14);" in provenance.describe(
        {**_environment(), "cpu": {"model": "AMD EPYC 9R14", "cores": 2}}
    )
    # And its generation, where the record has it (two EPYC generations can share one name).
    zen5 = {"model": "AMD EPYC", "cores": 2, "family": "26", "model_number": "2"}
    assert "1 x cpu:cpu (AMD EPYC, family 26 model 2);" in provenance.describe(
        {**_environment(), "cpu": zen5}
    )
    (warning,) = summary["provenance"]["warnings"]
    assert "paper/seed_1" in warning and "versions.jax: 0.10.2 vs 0.10.3" in warning
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "**Warning: the cells ran in different environments.**" in text
    assert "Reproducibility: not checked" in text
    # A rerun's finding is shown as recorded.
    record = {
        "cell": "unet/seed_0",
        "identical": True,
        "compared": ["metrics.jsonl"],
        "differences": [],
    }
    (tmp_path / cells.REPRODUCIBILITY_FILE).write_text(json.dumps(record))
    _summary(tmp_path)
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "cell unet/seed_0 trained again from scratch gave bit-identical metrics.jsonl" in text


def _code_environment(commit, dirty=False):
    return {**_environment(), "code": {"git_commit": commit, "git_dirty": dirty}}


def test_cells_from_two_commits_are_explained_only_by_a_code_check_that_matched(tmp_path):
    early, late = "a" * 40, "b" * 40
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    for variant in ("unet", "paper"):
        for seed in (0, 1):
            commit = late if variant == "paper" else early
            cell = sweeps.cell_dir(str(tmp_path), variant, seed)
            workdir_lib.write_environment(cell, _code_environment(commit))
    (warning,) = _summary(tmp_path)["provenance"]["warnings"]
    assert "paper/seed_0, paper/seed_1 differ from unet/seed_0" in warning
    assert f"code: {early[:12]} vs {late[:12]}" in warning

    # A rerun of unet/seed_0 by the later commit, compared with the kept cell.
    kept, rerun = sweeps.cell_dir(str(tmp_path), "unet", 0), tmp_path / "rerun"
    rerun.mkdir()
    workdir_lib.write_environment(str(rerun), _code_environment(late))
    differed = provenance.code_check(kept, str(rerun), "unet/seed_0", ["metrics.jsonl"], ["x"])
    assert differed["identical"] is False and differed["rerun_code"] == late[:12]
    provenance.add_code_check(tmp_path, differed)
    assert len(_summary(tmp_path)["provenance"]["warnings"]) == 1  # a check that differed

    matched = provenance.code_check(kept, str(rerun), "unet/seed_0", ["metrics.jsonl"], [])
    provenance.add_code_check(tmp_path, matched)
    assert provenance.read_code_checks(tmp_path) == [differed, matched]
    found = _summary(tmp_path)["provenance"]
    assert found["warnings"] == []
    (line,) = found["explained"]
    assert line.startswith(f"paper/seed_0, paper/seed_1 ran code {late[:12]}, unet/seed_0 code")
    assert "unet/seed_0 retrained by bbbbbbbbbbbb gave bit-identical metrics.jsonl" in line
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert f"- Code checked: {line} (`{sweeps.CODE_CHECKS_FILE}`)." in text
    # Exported with the sweep, so a kept copy reads the same.
    results.export_results(tmp_path, tmp_path.parent / "kept")
    assert provenance.read_code_checks(tmp_path.parent / "kept") == [differed, matched]

    # Other differences, or uncommitted code, are still warned, the code included.
    paper_0 = sweeps.cell_dir(str(tmp_path), "paper", 0)
    workdir_lib.write_environment(paper_0, _code_environment(late, dirty=True))
    warnings = _summary(tmp_path)["provenance"]["warnings"]
    assert any("(uncommitted changes)" in w for w in warnings)
    workdir_lib.write_environment(paper_0, {**_code_environment(late), "xla_flags": "--x"})
    (warning, *_) = _summary(tmp_path)["provenance"]["warnings"]
    assert "XLA flags" in warning
    assert f"code: {early[:12]} vs {late[:12]}" in warning


def test_a_sweep_with_a_test_folder_reads_each_cells_external_test_files(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    definition = json.loads((tmp_path / sweeps.SWEEP_FILE).read_text())
    definition.update(test_folder="/data/figshare", test_heldout_fraction=0.15)
    (tmp_path / sweeps.SWEEP_FILE).write_text(json.dumps(definition))
    assert _summary(tmp_path)["finished"] == []  # no cell has been scored on the folder yet
    for variant in ("unet", "paper"):
        for seed in (0, 1):
            cell = sweeps.cell_dir(str(tmp_path), variant, seed)
            for name in (results.EVAL_FILE, results.PER_IMAGE_FILE):
                os.rename(
                    os.path.join(cell, name),
                    os.path.join(cell, name.replace("test", "external_test")),
                )
    summary = _summary(tmp_path)
    assert len(summary["finished"]) == 4 and summary["missing"] == []
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "**Test set**: the external folder `/data/figshare`: the last 0.15 of each" in text


def _score_on_folder(root, folder, fingerprints):
    """Makes a fake sweep one scored on ``folder``: each cell's test files are copied to its
    external-test files, with the given fingerprint of the images scored (None: not recorded)."""
    definition = json.loads((root / sweeps.SWEEP_FILE).read_text())
    definition.update(test_folder=folder, test_heldout_fraction=0.0)
    (root / sweeps.SWEEP_FILE).write_text(json.dumps(definition))
    for (variant, seed), fingerprint in fingerprints.items():
        cell = sweeps.cell_dir(str(root), variant, seed)
        with open(os.path.join(cell, results.EVAL_FILE)) as f:
            scored = json.load(f)
        if fingerprint is not None:
            scored.update(test_folder=folder, test_data=fingerprint)
        with open(os.path.join(cell, layout.eval_file(sweeps.EXTERNAL_TEST)), "w") as f:
            json.dump(scored, f)
        shutil.copy(
            os.path.join(cell, results.PER_IMAGE_FILE),
            os.path.join(cell, layout.per_image_file(sweeps.EXTERNAL_TEST)),
        )


def test_the_report_checks_every_cell_was_scored_on_the_folders_images(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    folder = os.path.join(REPO, "bts_jax", "data", "sample")
    _score_on_folder(tmp_path, folder, {})
    examples = cells.test_examples(sweeps.load_sweep(str(tmp_path)))
    same = cells.test_data_fingerprint(examples)
    assert same == environment.data_fingerprint({"any": examples})["any"]
    assert same["examples"] == 60
    recorded = {("unet", 0): same, ("unet", 1): same, ("paper", 0): same, ("paper", 1): None}
    _score_on_folder(tmp_path, folder, recorded)
    found = _summary(tmp_path)["provenance"]["test_images"]
    assert found == {
        "recorded": [
            {
                "description": provenance.describe_images(same),
                "runs": ["unet/seed_0", "unet/seed_1", "paper/seed_0"],
            }
        ],
        "unrecorded": ["paper/seed_1"],
        "now": provenance.describe_images(same),
        "warnings": [],
    }
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "- Test images not recorded by 1 cell(s)" in text
    assert f"- The test folder now: {provenance.describe_images(same)}." in text
    # A cell scored on other images is named, and so is a folder that changed since scoring.
    _score_on_folder(tmp_path, folder, {("paper", 1): {**same, "examples": 59, "sha256": "f" * 64}})
    different, changed = _summary(tmp_path)["provenance"]["test_images"]["warnings"]
    assert "different test images" in different and "paper/seed_1: 59 images" in different
    assert changed.startswith("the test folder has changed since scoring: it now holds 60 images")
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "- **Warning: the cells were scored on different test images" in text


def test_exported_results_give_the_same_report_without_the_checkpoints(tmp_path):
    source, copy = tmp_path / "sweep", tmp_path / "kept"
    make_sweep(source, {"unet": SAME, "paper": {"dice": 0.02, "miou": 0.72, "bottom": 8}})
    (source / cells.REPRODUCIBILITY_FILE).write_text(
        json.dumps({"cell": "unet/seed_0", "identical": True, "compared": [], "differences": []})
    )
    for variant in ("unet", "paper"):  # what export leaves behind: checkpoints, curves
        cell = sweeps.cell_dir(str(source), variant, 0)
        os.makedirs(os.path.join(cell, layout.BEST_DIR, "100"))
        (tmp_path / "sweep" / variant / "seed_0" / layout.LOSS_FIGURE).write_bytes(b"png")
        workdir_lib.write_environment(cell, _environment())
    # An unfinished cell is not exported.
    running = sweeps.cell_dir(str(source), "paper", 2)
    (tmp_path / "sweep" / "paper" / "seed_2" / sweeps.CELL_FILE).write_text('{"status": "running"}')

    exported = results.export_results(source, copy)
    assert exported == ["unet/seed_0", "unet/seed_1", "unet/seed_2", "paper/seed_0", "paper/seed_1"]
    assert not os.path.exists(os.path.join(copy, os.path.relpath(running, source)))
    kept = sorted(os.listdir(copy / "unet" / "seed_0"))
    assert kept == sorted(
        [*results.RESULT_FILES[:3], results.EVAL_FILE, results.PER_IMAGE_FILE, layout.METRICS_JSONL]
    )  # no data_split.json in a fake cell; no best/, no loss.png
    original, again = _summary(source), _summary(copy)
    for key in ("variants", "comparisons", "claims", "provenance", "reproducibility", "split"):
        assert again[key] == original[key], key
    definition = sweeps.load_sweep(str(copy))  # sweep.py counts the exported cells as done
    states = [cells.cell_state(c, definition) for c in sweeps.expand_cells(definition, str(copy))]
    assert states.count(cells.DONE) == 5 and states.count(cells.NEW) == 1
    # Exporting again adds what finished since; another sweep's folder is refused.
    (source / "paper" / "seed_2" / sweeps.CELL_FILE).write_text('{"status": "done"}')
    assert len(results.export_results(source, copy)) == 6
    with pytest.raises(ValueError, match="into itself"):
        results.export_results(source, source)
    other = tmp_path / "other"
    make_sweep(other, {"unet": SAME, "paper": SAME}, seeds=(0,))
    with pytest.raises(ValueError, match=r"other.*holds another sweep"):
        results.export_results(source, other)


# Sweeps whose results the repository keeps (sweep.py --export_results), e.g. under docs/results/.
KEPT_SWEEPS = sorted(glob.glob(os.path.join(REPO, "docs", "results", "*", sweeps.SWEEP_FILE)))


@pytest.mark.parametrize(
    "sweep_file", KEPT_SWEEPS, ids=lambda p: os.path.basename(os.path.dirname(p))
)
def test_kept_sweep_results_read_back_whole_and_consistent(sweep_file):
    directory = os.path.dirname(sweep_file)
    runs, missing = results.load_runs(sweeps.load_sweep(directory), directory)
    assert runs
    # A kept cell is whole: the only cells missing are those not run yet.
    assert [m.reason for m in missing if m.reason != "no cell folder"] == []
    # Every cell was scored on the same test images, in the same environment (or from code that a
    # recorded check shows trains alike).
    assert len({tuple(sorted(run.per_image["id"])) for run in runs}) == 1
    assert provenance.environments(runs, provenance.read_code_checks(directory))["warnings"] == []


@pytest.mark.parametrize(
    "sweep_file", KEPT_SWEEPS, ids=lambda p: os.path.basename(os.path.dirname(p))
)
def test_kept_sweep_cells_are_the_cells_its_config_gives_today(sweep_file):
    # A kept sweep can be rerun or extended from its config: each kept cell's config.json is what
    # configs/sweeps/<name>.py resolves it to now (a base config changed under it would not be).
    from bts_jax.experiments import runner

    directory = os.path.dirname(sweep_file)
    name = sweeps.load_sweep(directory).name
    definition = sweeps.parse_sweep(
        config_tools.load_config_file(os.path.join("configs", "sweeps", f"{name}.py"), REPO)
    )
    base = config_tools.load_config_file(definition.base_config, REPO)
    cells = sweeps.expand_cells(definition, directory)
    configs = {cell.name: sweeps.cell_config(definition, base, cell) for cell in cells}
    runner.check_unchanged(cells, configs)
    # The check can fail: the same cells under another schedule are refused.
    base.optimizer.schedule = "poly" if base.optimizer.schedule != "poly" else "cosine"
    configs = {cell.name: sweeps.cell_config(definition, base, cell) for cell in cells}
    with pytest.raises(ValueError, match="optimizer.schedule"):
        runner.check_unchanged(cells, configs)


def test_a_sweep_scored_on_validation_names_its_dice_figure_so(tmp_path):
    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0, 1))
    definition = json.loads((tmp_path / sweeps.SWEEP_FILE).read_text())
    (tmp_path / sweeps.SWEEP_FILE).write_text(
        json.dumps({**definition, "score_split": "validation"})
    )
    # The fake cells' scores, moved to the files of the validation split.
    for cell in glob.glob(str(tmp_path / "*" / "seed_*")):
        for name in (layout.eval_file, layout.per_image_file):
            os.rename(os.path.join(cell, name("test")), os.path.join(cell, name("validation")))
    paths = report.write_report(tmp_path, model_stats=False)
    assert report.dice_figure_file("validation") == "validation_dice.png"
    assert os.path.isfile(tmp_path / "validation_dice.png")
    assert not os.path.exists(tmp_path / report.dice_figure_file("test"))
    assert paths["validation Dice per variant"].endswith("validation_dice.png")
    text = (tmp_path / report.REPORT_FILE).read_text()
    assert "](validation_dice.png)" in text and "test_dice" not in text


@pytest.mark.parametrize("test_fraction, split", [(0.15, "test"), (0.0, "validation")])
def test_prediction_figure_is_named_after_the_split_it_draws(
    tmp_path, monkeypatch, test_fraction, split
):
    from bts_jax.experiments import runner
    from bts_jax.inference import compare

    make_sweep(tmp_path, {"unet": SAME, "paper": SAME}, seeds=(0,))
    config = test_config.get_config()
    config.data.test_fraction = test_fraction
    drawn = []
    # The cells are fake (no checkpoints): only the choice of split and file name is under test.
    monkeypatch.setattr(runner.workdir_lib, "resolve_checkpoint", lambda path, which: (path, 1))
    monkeypatch.setattr(runner.workdir_lib, "load_config", lambda path: config)
    monkeypatch.setattr(
        compare, "compare_workdirs", lambda a, b, path, **kw: drawn.append((path, kw)) or path
    )
    path = runner.prediction_figure(sweeps.load_sweep(tmp_path), str(tmp_path))
    assert path == os.path.join(tmp_path, report.predictions_figure_file(split))
    assert os.path.basename(path) == f"predictions_{split}.png"
    assert drawn[0][1]["split"] == split
