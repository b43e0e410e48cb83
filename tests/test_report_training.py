"""The report's "How each variant trained" table, and a sweep scored on its validation split."""

import json
import math
import os
import shutil

import numpy as np
from helpers import read_text
from test_report import SAME, make_sweep

from bts_jax.experiments import report, results, sweeps, training
from bts_jax.workdir import layout


def _rewrite_history(cell, change):
    path = os.path.join(cell, layout.METRICS_JSONL)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    rows = change(rows)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _as_validation_study(root):
    """Turns a fake sweep into one scored on validation: its test files become validation's."""
    path = os.path.join(root, sweeps.SWEEP_FILE)
    with open(path) as f:
        definition = json.load(f)
    definition["score_split"] = "validation"
    with open(path, "w") as f:
        json.dump(definition, f)
    for variant in definition["variants"]:
        for seed in definition["seeds"]:
            cell = sweeps.cell_dir(str(root), variant, seed)
            for name in (results.EVAL_FILE, results.PER_IMAGE_FILE):
                target = name.replace("test", "validation")
                shutil.move(os.path.join(cell, name), os.path.join(cell, target))


def test_the_training_table_reads_spread_first_epochs_losses_and_seconds(tmp_path):
    root = str(tmp_path / "study")
    specs = {"unet": SAME, "paper": {**SAME, "dice": 0.05}}
    written = make_sweep(root, specs, paper_model="")
    _as_validation_study(root)
    # paper/seed_1 predicts only background after its first epoch and ends at a higher loss.
    paper_1 = sweeps.cell_dir(root, "paper", 1)

    def background_first(rows):
        rows[0].update(val_dice=0.0, val_miou=0.49, val_loss=1.0)
        rows[-1]["train_loss"] = 0.4
        return rows

    _rewrite_history(paper_1, background_first)
    # paper's cells took 1.5x the baseline's seconds.
    for seed in (0, 1, 2):
        status = os.path.join(sweeps.cell_dir(root, "paper", seed), sweeps.CELL_FILE)
        with open(status, "w") as f:
            json.dump({"status": "done", "wall_s": 90.0}, f)

    report.write_report(root, model_stats=False)
    with open(os.path.join(root, report.SUMMARY_JSON)) as f:
        summary = json.load(f)
    rows = summary["training"]
    paper_dice = [written[("paper", s, None)]["dice"] for s in (0, 1, 2)]
    assert math.isclose(rows["paper"]["dice"]["mean"], np.mean(paper_dice), rel_tol=1e-12)
    assert math.isclose(rows["paper"]["dice"]["std"], np.std(paper_dice, ddof=1), rel_tol=1e-9)
    assert rows["paper"]["dice"]["min"] == min(paper_dice)
    assert rows["paper"]["background_only_epoch_1"] == 1
    # Only the changed cell had a first-epoch evaluation (the fake cells validate even epochs).
    assert rows["paper"]["epoch_1_evaluated"] == 1 and rows["unet"]["epoch_1_evaluated"] == 0
    assert math.isclose(rows["unet"]["final_train_loss"]["mean"], 1 / 20, rel_tol=1e-12)
    assert rows["paper"]["final_train_loss"]["max"] == 0.4
    assert (rows["unet"]["wall_ratio"], rows["paper"]["wall_ratio"]) == (1.0, 1.5)

    text = read_text(root, report.REPORT_FILE)
    assert "## Validation metrics per variant" in text and "Test metrics" not in text
    assert "## How each variant trained" in text
    table = text.split("## How each variant trained")[1].split("##")[0]
    line = next(row for row in table.splitlines() if row.startswith("| paper | 3 |"))
    assert "| 1/1 |" in line and "| 90 | 1.50 |" in line


def test_first_epoch_dice_and_final_loss_of_a_run_without_them_are_nan():
    run = results.Run(
        variant="unet",
        seed=0,
        fold=None,
        path="",
        config={},
        test={},
        per_image={},
        history=[{"epoch": 2, "step": 4, "val_dice": 0.3}],
        wall_s=1.0,
        environment=None,
        test_data=None,
    )
    assert math.isnan(training.first_epoch_val_dice(run))
    assert math.isnan(training.final_train_loss(run))
