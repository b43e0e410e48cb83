"""Runs an ablation sweep (variants x seeds x folds), then writes its report.

    python sweep.py --config configs/sweeps/paper_ablation.py \
        --workdir workdirs/sweeps/paper_ablation
    python sweep.py --config configs/sweeps/paper_ablation.py --workdir DIR \
        --config.overrides.data.data_dir=/path/to/figshare_brain_tumor --config.seeds=0,1,2,3,4

Run it again with the same arguments to continue after an interruption: finished cells are skipped
and an interrupted cell resumes from its checkpoints. ``report.py DIR`` rewrites the report alone.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/*.py).")
flags.DEFINE_string("workdir", None, "Sweep folder: one subfolder per cell, the report at the top.")
flags.DEFINE_bool("report", True, "Write the report when the cells are done.")
flags.DEFINE_bool("model_stats", True, "Count parameters and GFLOPs per variant in the report.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    from bts_jax import sweep

    repo_root = os.path.dirname(os.path.abspath(__file__))
    result = sweep.run_sweep(
        FLAGS.config,
        FLAGS.workdir,
        repo_root=repo_root,
        write_report=FLAGS.report,
        model_stats=FLAGS.model_stats,
    )
    print(f"Trained {len(result['trained'])} cell(s), skipped {len(result['skipped'])} done.")
    if result["report"]:
        print(f"Report: {os.path.abspath(result['report']['report'])}")


if __name__ == "__main__":
    app.run(main)
