"""Trains a kept sweep cell again from its config.json alone and compares it with what was kept.

    python benchmarks/reproduce_kept_cell.py \
        --kept_cell docs/results/quickstart_ablation/unet/seed_0 --workdir /tmp/unet_seed_0

The cells kept under docs/results hold no checkpoints, only their metrics and evaluation files, so
the rerun is compared on those: every row of ``metrics.jsonl`` but the measured images/s, and
``eval_validation.json`` and ``per_image_validation.csv`` byte for byte. A config.json written
before a field existed means what it meant then (the loss weights, the augmentation switches,
BatchNorm, no weight averaging), so a rerun that matches shows that the code's changes since kept
the old configs' numbers. Train on the device kind the cell names (its environment.json): XLA's
kernels differ between machines. Exits with status 1 when anything differs.
"""

import filecmp
import os
import sys

from absl import app, flags

from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.cli import flags as cli_flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "kept_cell", None, "A kept cell's folder (config.json, metrics.jsonl, eval files)."
)
flags.mark_flag_as_required("kept_cell")
cli_flags.define_workdir_flag("Where the rerun trains (a new folder).")

COMPARED_FILES = ("eval_validation.json", "per_image_validation.csv")


def replayable_rows(workdir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl without the measured throughput."""
    rows = workdir_lib.read_metrics(workdir)
    return [{k: v for k, v in row.items() if k != "train_images_per_s"} for row in rows]


def differences(kept: str, rerun: str) -> list[str]:
    """A line per difference between a kept cell and its rerun (empty: identical)."""
    found = []
    kept_rows, rerun_rows = replayable_rows(kept), replayable_rows(rerun)
    if len(kept_rows) != len(rerun_rows):
        found.append(f"metrics.jsonl: {len(kept_rows)} rows kept, {len(rerun_rows)} rerun")
    for kept_row, rerun_row in zip(kept_rows, rerun_rows, strict=False):
        for key in sorted(set(kept_row) | set(rerun_row)):
            if kept_row.get(key) != rerun_row.get(key):
                found.append(
                    f"metrics.jsonl epoch {kept_row.get('epoch')} {key}: "
                    f"kept {kept_row.get(key)!r}, rerun {rerun_row.get(key)!r}"
                )
    for name in COMPARED_FILES:
        if not filecmp.cmp(os.path.join(kept, name), os.path.join(rerun, name), shallow=False):
            found.append(f"{name} differs")
    return found


def main(argv):
    del argv
    config = workdir_lib.load_config(FLAGS.kept_cell)
    if os.path.exists(FLAGS.workdir):
        sys.exit(f"--workdir={FLAGS.workdir} exists: the rerun needs a new folder.")
    train_lib.train_and_evaluate(config, FLAGS.workdir, show_progress=False)
    found = differences(FLAGS.kept_cell, FLAGS.workdir)
    rows = len(replayable_rows(FLAGS.kept_cell))
    print(f"kept cell: {FLAGS.kept_cell}\nrerun:     {FLAGS.workdir}")
    print(
        f"compared:  metrics.jsonl ({rows} epochs, all but train_images_per_s), "
        + ", ".join(COMPARED_FILES)
    )
    if found:
        print("DIFFERENT:\n  " + "\n  ".join(found))
        sys.exit(1)
    print("identical")


if __name__ == "__main__":
    app.run(main)
