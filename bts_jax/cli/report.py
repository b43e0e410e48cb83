"""Writes the report of an ablation sweep: tables, paired tests, verdicts on the paper's claims.

    python report.py workdirs/sweeps/paper_ablation
    python report.py workdirs/sweeps/paper_ablation --alpha=0.01 --nomodel_stats

Reads ``DIR/sweep.json`` and the sweep's finished cells; writes ``DIR/report.md``,
``DIR/summary.csv``, ``DIR/summary.json`` and the figures into ``DIR``. Unfinished cells are listed
as missing and left out of every statistic.
"""

import os

from absl import app, flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``report.py``."""
    flags.DEFINE_float(
        "alpha", 0.05, "Significance level of the verdicts (Holm-adjusted p-values)."
    )
    flags.DEFINE_float("confidence", 0.95, "Confidence level of every interval.")
    flags.DEFINE_bool(
        "predictions",
        True,
        "Draw the baseline and the paper model side by side on test images (loads both models).",
    )
    cli_flags.define_model_stats_flag()


def main(argv: list[str]) -> None:
    """Writes the report of the sweep folder ``argv[1]``."""
    if len(argv) != 2:
        raise app.UsageError("Usage: python report.py DIR (a sweep folder with sweep.json)")
    from bts_jax.experiments import report, runner

    paths = report.write_report(
        argv[1],
        alpha=FLAGS.alpha,
        confidence=FLAGS.confidence,
        model_stats=FLAGS.model_stats,
        prediction_figure=runner.prediction_figure if FLAGS.predictions else None,
    )
    for path in paths.values():
        print(f"Wrote {os.path.abspath(path)}")


def run() -> None:
    """The ``report.py`` program."""
    define_flags()
    run_program(main)
