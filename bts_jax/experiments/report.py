"""The report of an ablation sweep (docs/design.md section 7): tables, paired tests, verdicts.

`write_report` reads a sweep folder (`bts_jax.experiments.sweeps`: ``sweep.json`` and one cell
per (variant, seed[, fold]) holding ``config.json``, ``eval_test.json``, ``per_image_test.csv``,
``metrics.jsonl`` and ``cell.json``; cells that are not done are listed as missing and left out)
and writes ``report.md``, ``summary.csv``, ``summary.json`` and PNG figures into it. The work is
split by job: `results` reads the cells, `analysis` summarises and compares them, `claims` gives
the verdicts, `markdown` and `figures` present them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

from bts_jax import jsonio
from bts_jax.experiments import analysis
from bts_jax.experiments.analysis import (
    compare_with_baseline,
    summarize_types,
    summarize_variant,
)
from bts_jax.experiments.cells import read_reproducibility, test_data_fingerprint, test_examples
from bts_jax.experiments.claims import claim_verdicts
from bts_jax.experiments.figures import plot_test_dice, plot_validation_curves
from bts_jax.experiments.markdown import report_markdown, write_summary_csv
from bts_jax.experiments.provenance import environments, read_code_checks, test_images
from bts_jax.experiments.results import load_runs, split_protocol
from bts_jax.experiments.sweeps import SweepDefinition, load_sweep
from bts_jax.experiments.training import training_summary

REPORT_FILE = "report.md"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
VAL_MIOU_FIGURE = "val_miou.png"


def dice_figure_file(split: str) -> str:
    """``<split>_dice.png``: each variant's Dice over seeds, named after the split it scores.

    Args:
      split: the sweep's scored split, "test" or "validation" (``sweep.score_split``).

    Returns:
      The file name.
    """
    return f"{split}_dice.png"


def predictions_figure_file(split: str) -> str:
    """``predictions_<split>.png``: the side-by-side predictions, named after the split drawn.

    Args:
      split: the split whose images are drawn ("test", or "validation" for a sweep without one).

    Returns:
      The file name.
    """
    return f"predictions_{split}.png"


# A caller-supplied figure of predictions (the paper's figure 8): called with the loaded sweep and
# the output folder, returns the written PNG's path (or None for no figure).
PredictionFigure = Callable[[SweepDefinition, str], "str | None"]


def _test_images_now(sweep: SweepDefinition) -> dict | None:
    """The fingerprint of the sweep's test images in its folder now (None: unreadable)."""
    try:
        return test_data_fingerprint(test_examples(sweep))
    except (OSError, ValueError):
        # A report may be written where the folder is not (e.g. gathered from a cluster).
        return None


def write_report(
    directory: str | os.PathLike,
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    model_stats: bool = True,
    prediction_figure: PredictionFigure | None = None,
) -> dict[str, str]:
    """Writes the sweep's report into its folder.

    Files: ``report.md``, ``summary.csv`` (one row per variant), ``summary.json`` (everything:
    sweep, split protocol, per-variant statistics, comparisons, claims, missing cells, figures;
    NaN as null), ``<split>_dice.png`` (`dice_figure_file`: ``test_dice.png``, or
    ``validation_dice.png`` for a sweep scored on validation) and ``val_miou.png``.

    Args:
      directory: the sweep folder (see the module docstring for its layout).
      alpha: significance level of the verdicts (on Holm-adjusted p-values).
      confidence: confidence level of every interval.
      model_stats: compute parameters and GFLOPs of each variant's model (`model_summary`, one
        XLA compilation per variant at the run's image size; cached per variant).
      prediction_figure: hook for the side-by-side prediction figure (the paper's figure 8),
        which needs the trained models: called as ``prediction_figure(sweep, directory)`` after
        the other figures; the PNG path it returns is embedded in the report.

    Returns:
      name -> path of every written file (``"report"``, ``"summary_csv"``, ``"summary_json"`` and
      one entry per figure).

    Raises:
      FileNotFoundError, ValueError: a missing or invalid ``sweep.json``
        (`bts_jax.experiments.sweeps.load_sweep`).
    """
    directory = os.fspath(directory)
    sweep = load_sweep(directory)
    runs, missing = load_runs(sweep, directory)
    runs_by_variant = {name: [r for r in runs if r.variant == name] for name in sweep.variants}
    variant_stats = {}
    for name, variant_runs in runs_by_variant.items():
        row = summarize_variant(variant_runs, confidence)
        row.update(params=None, gflops=None, types=summarize_types(variant_runs, confidence))
        if model_stats and variant_runs:
            row.update(analysis.model_stats(variant_runs[0]))
        variant_stats[name] = row
    comparisons = compare_with_baseline(
        runs_by_variant, sweep.baseline, confidence=confidence, alpha=alpha
    )
    claims = claim_verdicts(sweep, runs_by_variant, variant_stats, comparisons, alpha=alpha)

    figures = {
        f"{sweep.scored_title.lower()} Dice per variant": plot_test_dice(
            runs_by_variant,
            os.path.join(directory, dice_figure_file(sweep.score_split)),
            split_title=sweep.scored_title,
        ),
        "validation mIoU per epoch": plot_validation_curves(
            runs_by_variant, os.path.join(directory, VAL_MIOU_FIGURE)
        ),
    }
    if prediction_figure is not None:
        path = prediction_figure(sweep, directory)
        if path:
            figures["predictions"] = path

    paths = {
        "report": os.path.join(directory, REPORT_FILE),
        "summary_csv": os.path.join(directory, SUMMARY_CSV),
        "summary_json": os.path.join(directory, SUMMARY_JSON),
    }
    provenance = environments(runs, read_code_checks(directory))
    if sweep.test_folder:
        provenance["test_images"] = test_images(runs, _test_images_now(sweep))
    reproducibility = read_reproducibility(directory)
    training = training_summary(runs_by_variant, sweep.baseline)
    markdown = report_markdown(
        sweep,
        runs,
        missing,
        variant_stats,
        comparisons,
        claims,
        figures,
        alpha,
        provenance=provenance,
        reproducibility=reproducibility,
        training=training,
    )
    jsonio.write_text(paths["report"], markdown)
    write_summary_csv(paths["summary_csv"], variant_stats)
    summary = {
        "sweep": sweep.to_json(),
        "split": split_protocol(runs),
        "alpha": alpha,
        "confidence": confidence,
        "variants": variant_stats,
        "training": training,
        "num_comparisons": int(sum(math.isfinite(c["pvalue"]) for c in comparisons)),
        "comparisons": comparisons,
        "claims": claims,
        "finished": [
            {"variant": r.variant, "seed": r.seed, "fold": r.fold, "path": r.path} for r in runs
        ],
        "missing": [dataclasses.asdict(m) for m in missing],
        "figures": {title: os.path.basename(path) for title, path in figures.items()},
        "provenance": provenance,
        "reproducibility": reproducibility,
    }
    jsonio.write_json(paths["summary_json"], summary, indent=1)
    return {**paths, **{title: path for title, path in figures.items()}}
