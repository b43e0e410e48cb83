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

A sweep whose later cells ran from a later commit (variants added after the first cells) keeps the
evidence that the two commits train alike: train the rerun from the later commit's checkout, then
record the comparison from any checkout. ``PYTHONPATH=.`` makes the rerun import that checkout's
bts_jax: a script under benchmarks/ otherwise imports whichever checkout the environment installed
(its environment.json then names that code, and the record shows it),

    (cd LATER_CHECKOUT && PYTHONPATH=. python benchmarks/reproduce_kept_cell.py \
        --kept_cell SWEEP/today/seed_0 --workdir /tmp/today_seed_0)
    python benchmarks/reproduce_kept_cell.py --kept_cell SWEEP/today/seed_0 \
        --workdir /tmp/today_seed_0 --compare_only --record_in SWEEP

which appends the finding, with the code each run names in its environment.json, to the sweep's
``code_checks.json``; the report then names the cells that ran the later code instead of warning
(`bts_jax.experiments.provenance`).
"""

import filecmp
import os
import sys

from absl import app, flags

from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.cli import flags as cli_flags
from bts_jax.experiments import provenance
from bts_jax.experiments.sweeps import SWEEP_FILE

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "kept_cell", None, "A kept cell's folder (config.json, metrics.jsonl, eval files)."
)
flags.mark_flag_as_required("kept_cell")
cli_flags.define_workdir_flag("Where the rerun trains (a new folder).")
flags.DEFINE_bool(
    "compare_only", False, "--workdir already holds the rerun (trained elsewhere): compare only."
)
flags.DEFINE_string(
    "record_in",
    None,
    "A sweep folder whose code_checks.json gets the finding (the cell must be one of its cells).",
)

COMPARED_FILES = ("eval_validation.json", "per_image_validation.csv")


def replayable_rows(workdir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl without their measured fields (throughput, seconds)."""
    return workdir_lib.without_measured(workdir_lib.read_metrics(workdir))


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
    cell = None
    if FLAGS.record_in is not None:
        cell = os.path.relpath(os.path.abspath(FLAGS.kept_cell), os.path.abspath(FLAGS.record_in))
        if cell.startswith("..") or not os.path.isfile(os.path.join(FLAGS.record_in, SWEEP_FILE)):
            sys.exit(f"--record_in={FLAGS.record_in} is not the sweep folder of --kept_cell.")
    if FLAGS.compare_only:
        if not os.path.isdir(FLAGS.workdir):
            sys.exit(f"--workdir={FLAGS.workdir} does not exist: --compare_only needs the rerun.")
    elif os.path.exists(FLAGS.workdir):
        sys.exit(f"--workdir={FLAGS.workdir} exists: the rerun needs a new folder.")
    else:
        config = workdir_lib.load_config(FLAGS.kept_cell)
        train_lib.train_and_evaluate(config, FLAGS.workdir, show_progress=False)
    found = differences(FLAGS.kept_cell, FLAGS.workdir)
    rows = len(replayable_rows(FLAGS.kept_cell))
    measured = ", ".join(workdir_lib.MEASURED_FIELDS)
    compared = [f"metrics.jsonl ({rows} epochs, all but {measured})", *COMPARED_FILES]
    print(f"kept cell: {FLAGS.kept_cell}\nrerun:     {FLAGS.workdir}")
    print("compared:  " + ", ".join(compared))
    if cell is not None:
        check = provenance.code_check(FLAGS.kept_cell, FLAGS.workdir, cell, compared, found)
        path = provenance.add_code_check(FLAGS.record_in, check)
        print(f"recorded:  {check['kept_code']} against {check['rerun_code']} in {path}")
    if found:
        print("DIFFERENT:\n  " + "\n  ".join(found))
        sys.exit(1)
    print("identical")


if __name__ == "__main__":
    app.run(main)
