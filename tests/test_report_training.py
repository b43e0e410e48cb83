"""The report's "How each variant trained" table, and a sweep scored on its validation split."""

import json
import math
import os
import shutil

import numpy as np
from helpers import read_text
from test_report import SAME, make_sweep

from bts_jax.experiments import claims as claims_lib
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

    # A variant whose cells have not finished is not a row of the table (it is a missing cell).
    for seed in range(3):
        shutil.rmtree(sweeps.cell_dir(root, "paper", seed))
    report.write_report(root, model_stats=False)
    table = read_text(root, report.REPORT_FILE).split("## How each variant trained")[1]
    assert "| unet | 3 |" in table.split("##")[0] and "| paper |" not in table.split("##")[0]


def _run_with(history):
    """A finished run of the paper model with only ``history`` (its metrics.jsonl) to read."""
    return results.Run(
        variant="paper",
        seed=0,
        fold=None,
        path="",
        config={},
        test={},
        per_image={},
        history=history,
        wall_s=1.0,
        environment=None,
        test_data=None,
    )


def test_first_epoch_dice_and_final_loss_of_a_run_without_them_are_nan():
    run = _run_with([{"epoch": 2, "step": 4, "val_dice": 0.3}])
    assert math.isnan(training.first_epoch_val_dice(run))
    assert math.isnan(training.final_train_loss(run))


def _cosine_history(num_epochs, final):
    """Epoch rows of a cosine schedule from 1e-3 to ``final`` * 1e-3 over ``num_epochs``."""
    rates = 1e-3 * (final + (1 - final) * (1 + np.cos(np.pi * np.arange(1, 21) / num_epochs)) / 2)
    return [{"epoch": e + 1, "learning_rate": float(r)} for e, r in enumerate(rates)]


def test_the_loss_bottom_is_not_testable_where_the_schedule_or_the_last_epoch_forces_it():
    # The quickstart's cosine reaches 0 at its last epoch (8): any curve bottoms out there.
    ended = _run_with(_cosine_history(8, 0.0)[:8])
    assert "the curve was cut there" in claims_lib.loss_bottom_untestable([ended], 8)
    # The kept ablation's paper model bottoms out at epoch 6: epochs 7-8 train at 2.0% of the
    # peak on average (3.8e-5 and 0).
    assert "2.0% of its peak" in claims_lib.loss_bottom_untestable([ended], 6)
    # Four epochs before the end, the rest of the schedule averages 13% of the peak: testable.
    assert claims_lib.loss_bottom_untestable([ended], 4) == ""
    # A cosine to a floor of 0.1 never trains below 10% of its peak: testable to the last epoch.
    floored = _run_with(_cosine_history(20, 0.1))
    assert claims_lib.loss_bottom_untestable([floored], 8) == ""
    assert claims_lib.loss_bottom_untestable([floored], 19) == ""


def test_claim_c_says_not_testable_on_runs_whose_schedule_ends_at_their_bottom(tmp_path):
    root = str(tmp_path / "ablation")
    make_sweep(root, {"unet": SAME, "paper": SAME})
    for variant in ("unet", "paper"):
        for seed in (0, 1, 2):

            def to_zero(rows):
                for row, schedule in zip(rows, _cosine_history(20, 0.0), strict=True):
                    row["learning_rate"] = schedule["learning_rate"]
                return rows

            _rewrite_history(sweeps.cell_dir(root, variant, seed), to_zero)
    report.write_report(root, model_stats=False)
    with open(os.path.join(root, report.SUMMARY_JSON)) as f:
        claim = next(c for c in json.load(f)["claims"] if c["id"] == "c")
    # The fake curves bottom out at epoch 8 (SAME), where this cosine is still at 0.65 of its
    # peak over 20 epochs: testable, and supported.
    assert claim["verdict"] == "supported"
    for variant in ("unet", "paper"):
        for seed in (0, 1, 2):
            _rewrite_history(sweeps.cell_dir(root, variant, seed), lambda rows: rows[:8])
    report.write_report(root, model_stats=False)
    with open(os.path.join(root, report.SUMMARY_JSON)) as f:
        claim = next(c for c in json.load(f)["claims"] if c["id"] == "c")
    assert claim["verdict"] == "not testable"
    assert "not testable with these runs" in claim["details"]
