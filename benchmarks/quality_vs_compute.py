"""Held-out Dice against training time: each run scored at every save it kept.

    python train.py --config configs/quickstart.py --workdir workdirs/curve/quickstart \
        --config.checkpoint.max_to_keep=0
    python benchmarks/quality_vs_compute.py --workdir workdirs/curve/quickstart \
        --output workdirs/curve/points.json --plot workdirs/curve/quality_vs_compute.png

A run's saves (``checkpoints/``; ``config.checkpoint.max_to_keep=0`` keeps every epoch's) are each
scored on the held-out patients of ``benchmarks/heldout_quickstart.py`` (the shared folder's last
id blocks, minus the bundled samples' ids; each slice at its own size), and placed at the minutes
the run had trained when it saved: ``wall_s`` of its ``metrics.jsonl`` row of that step (set-up and
compilation included, summed over resumed sittings). So the curve says what an extra hour buys.

Restartable: points already in ``--output`` (same run, same step, same held-out images) are kept
and not scored again, so a long list of runs is scored in pieces. Prints one row per point and, per
run, its validation and held-out Dice at each save; ``--plot`` draws held-out Dice against minutes,
one line per run. The held-out images are scored at every save, but a run's recipe is chosen on
validation only: the curve measures, it selects nothing.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_flags
import heldout_quickstart
from absl import app, flags

from bts_jax import jsonio
from bts_jax import workdir as workdir_lib
from bts_jax.cli import flags as cli_flags
from bts_jax.data import splits
from bts_jax.inference.scoring import evaluate_examples

cli_flags.define_workdir_flag("Trained workdirs, comma-separated: one curve each.", several=True)
cli_flags.define_output_flag("JSON file of the points (read first: scored points are kept).")
cli_flags.define_batch_size_flag(16)
bench_flags.define_heldout_flags()
flags.DEFINE_string("plot", "", "Also draw held-out Dice against minutes into this PNG.")
FLAGS = flags.FLAGS


def run_points(workdir: str) -> list[dict]:
    """A run's kept saves with the epoch row each closed: where the curve can be scored.

    Args:
      workdir: a trained workdir.

    Returns:
      One ``{"workdir", "step", "epoch", "minutes", "val_dice"}`` per save in ``checkpoints/``
      that ends an epoch, oldest first.

    Raises:
      ValueError: the run has no save at an epoch's end, or its rows have no ``wall_s`` (trained
        before bts_jax recorded it); both named.
    """
    rows = {int(row["step"]): row for row in workdir_lib.read_metrics(workdir)}
    steps = [step for step in workdir_lib.saved_steps(workdir) if step in rows]
    if not steps:
        raise ValueError(f"{workdir} keeps no save at an epoch's end (checkpoints/).")
    untimed = [step for step in steps if "wall_s" not in rows[step]]
    if untimed:
        raise ValueError(
            f"{workdir}/metrics.jsonl has no wall_s at step(s) {untimed}: trained before bts_jax "
            "recorded it; train it again to place it on the curve."
        )
    return [
        {
            "workdir": os.path.abspath(workdir),
            "step": step,
            "epoch": int(rows[step]["epoch"]),
            "minutes": float(rows[step]["wall_s"]) / 60.0,
            "val_dice": rows[step].get("val_dice"),
        }
        for step in steps
    ]


def score_point(point: dict, examples: list, batch_size: int) -> dict:
    """``point`` with the held-out scores of its save (tumour Dice, per-image Dice, misses)."""
    found = evaluate_examples(
        point["workdir"], examples, which=f"step:{point['step']}", batch_size=batch_size
    )
    missed = sum(row["pred_pixels"] == 0 for row in found.per_image)
    return {
        **point,
        "heldout_dice": float(found.metrics["dice"]),
        "heldout_dice_per_image": float(found.metrics["dice_per_image"]),
        "heldout_empty": int(missed),
    }


def read_points(path: str, images: dict) -> list[dict]:
    """The points already scored in ``path`` on the same held-out images (none if no file).

    Raises:
      ValueError: ``path`` holds points scored on other images.
    """
    if not path or not os.path.isfile(path):
        return []
    kept = jsonio.read_json(path)
    if kept.get("images") != images:
        raise ValueError(
            f"{path} holds points scored on other held-out images ({kept.get('images')}); "
            "write to another --output."
        )
    return list(kept["points"])


def plot_curves(points: list[dict], path: str) -> None:
    """Draws held-out Dice against training minutes, one line per run, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for workdir in dict.fromkeys(p["workdir"] for p in points):
        run = sorted((p for p in points if p["workdir"] == workdir), key=lambda p: p["minutes"])
        label = os.path.relpath(workdir)
        ax.plot([p["minutes"] for p in run], [p["heldout_dice"] for p in run], "o-", label=label)
    ax.set_xlabel("training minutes (set-up and compilation included)")
    ax.set_ylabel("held-out tumour Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    try:
        examples = heldout_quickstart.select(
            splits.heldout_block(FLAGS.data_dir, FLAGS.heldout_fraction), FLAGS.max_images
        )
        images = {"data_dir": os.path.abspath(FLAGS.data_dir), "ids": [e.id for e in examples]}
        points = read_points(FLAGS.output, images)
        todo = []
        for workdir in FLAGS.workdir:
            heldout_quickstart.check_unseen(workdir, set(images["ids"]))
            todo += run_points(workdir)
    except (OSError, ValueError) as error:  # No folder, a run that saw these patients...
        sys.exit(f"quality_vs_compute.py: {type(error).__name__}: {error}")
    done = {(p["workdir"], p["step"]) for p in points}
    for point in todo:
        if (point["workdir"], point["step"]) in done:
            continue
        points.append(score_point(point, examples, FLAGS.batch_size))
        if FLAGS.output:  # After each point, so a killed scoring keeps what it did.
            jsonio.write_json(FLAGS.output, {"images": images, "points": points}, indent=1)
    print(f"held-out slices: {len(examples)} from {FLAGS.data_dir}")
    print("run | epoch | minutes | validation Dice | held-out Dice | empty predictions")
    for p in sorted(points, key=lambda p: (p["workdir"], p["step"])):
        val = "-" if p["val_dice"] is None else f"{p['val_dice']:.4f}"
        print(
            f"{os.path.relpath(p['workdir'])} | {p['epoch']} | {p['minutes']:.1f} | {val} | "
            f"{p['heldout_dice']:.4f} | {p['heldout_empty']}"
        )
    if FLAGS.plot:
        plot_curves(points, FLAGS.plot)
        print(f"figure: {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
