r"""Runs an ablation sweep (variants x seeds x folds), then writes its report.

    python sweep.py --config configs/sweeps/paper_ablation.py \
        --workdir workdirs/sweeps/paper_ablation
    python sweep.py --config configs/sweeps/paper_ablation.py --workdir DIR \
        --config.overrides.data.data_dir=/path/to/figshare_brain_tumor --config.seeds=0,1,2,3,4

Run it again with the same arguments to continue after an interruption: finished cells are skipped
and an interrupted cell resumes from its checkpoints. ``report.py DIR`` rewrites the report alone.
``--export_results DEST`` copies the finished cells' results without their checkpoints (to keep,
or to continue the sweep elsewhere: ``sweep.py`` on DEST trains only the cells still missing).
"""

import os

from absl import flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``sweep.py``."""
    cli_flags.define_config_flag(
        "Sweep config: a file, or the name of a packaged one (paper_ablation, attention_zoo...)."
    )
    cli_flags.define_workdir_flag("Sweep folder: one subfolder per cell, the report at the top.")
    flags.DEFINE_bool("report", True, "Write the report when the cells are done.")
    cli_flags.define_model_stats_flag()
    flags.DEFINE_bool("list", False, "Print the cells with their index and state, run nothing.")
    flags.DEFINE_list(
        "cell",
        None,
        "Run only these cells (indices of --list), e.g. a job array's $SLURM_ARRAY_TASK_ID; the "
        "report is then left to report.py DIR.",
    )
    flags.DEFINE_integer(
        "reproduce",
        None,
        "Train finished cell K again from scratch and say whether the rerun is bit-identical "
        "(DIR/reproducibility.json, shown in the report).",
    )
    flags.DEFINE_string(
        "export_results",
        None,
        "Copy the finished cells' results (no checkpoints) and sweep.json to this folder, which "
        "report.py reads and sweep.py continues; run nothing.",
    )


def main(argv: list[str]) -> None:
    """Trains the sweep's unfinished cells, then writes its report."""
    cli_flags.no_extra_arguments(argv)
    from bts_jax.experiments import runner
    from bts_jax.experiments.results import export_results

    if FLAGS.list:
        print("\n".join(runner.list_cells(FLAGS.config, FLAGS.workdir)))
        return
    if FLAGS.export_results:
        runner.prepare_sweep(FLAGS.config, FLAGS.workdir)  # the config must match the folder
        exported = export_results(FLAGS.workdir, FLAGS.export_results)
        print(f"Exported {len(exported)} finished cell(s) to {FLAGS.export_results}.")
        return
    if FLAGS.reproduce is not None:
        record = runner.reproduce_cell(FLAGS.config, FLAGS.workdir, FLAGS.reproduce)
        verdict = "bit-identical" if record["identical"] else "DIFFERENT"
        print(f"Cell {record['cell']} trained again: {verdict}.")
        for line in record["differences"]:
            print(f"  {line}")
        return
    cells = None if FLAGS.cell is None else [int(i) for i in FLAGS.cell]
    result = runner.run_sweep(
        FLAGS.config,
        FLAGS.workdir,
        write_report=FLAGS.report and cells is None,
        model_stats=FLAGS.model_stats,
        cells=cells,
    )
    busy = f", left {len(result['busy'])} to other processes" if result["busy"] else ""
    print(f"Trained {len(result['trained'])} cell(s), skipped {len(result['skipped'])} done{busy}.")
    if result["report"]:
        print(f"Report: {os.path.abspath(result['report']['report'])}")


def run() -> None:
    """The ``sweep.py`` program (``bts-sweep`` once installed)."""
    define_flags()
    run_program(main, lambda argv: cli_flags.prepare_config_argument(argv, "sweep"))
