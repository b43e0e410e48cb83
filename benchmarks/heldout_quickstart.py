"""Scores a trained workdir on held-out patients: the last id blocks of each tumour type.

    python train.py --config configs/quickstart.py --workdir workdirs/quickstart
    python benchmarks/heldout_quickstart.py --workdir workdirs/quickstart
    python benchmarks/heldout_quickstart.py --workdir W --data_dir /path/to/figshare_brain_tumor

The held-out slices are, per tumour type of the folder (``../shared/data/figshare_brain_tumor``
by default), the last ``--heldout_fraction`` of its ids in ascending order (the blocked split's
validation block), minus every id of a bundled sample. ``tools/make_sample_128.py`` bundles only ids
before those blocks (with a gap), so a quickstart model never saw these patients (patient ids are
not published; consecutive ids are mostly slices of one patient). A workdir whose training or
validation split holds a held-out id is refused.

Each slice is predicted at its own size with the library's API (equalised and resized exactly as in
training, the class map sampled back onto the original grid), and scored at that size:
tumour Dice over all pixels and the mean per-image Dice, mIoU, HD95, the share of slices with an
empty prediction (every held-out slice has a tumour, so an empty prediction is a missed tumour and
scores Dice 0), and the run's training time read from the workdir's files.
"""

import argparse
import datetime
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_flags
import numpy as np

from bts_jax import jsonio
from bts_jax.data import sources, splits
from bts_jax.inference.scoring import evaluate_examples
from bts_jax.workdir import layout, read_split_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_unseen(workdir: str, heldout_ids: set[str]) -> None:
    """Refuses a workdir whose own split (``data_split.json``) trained or selected on a held-out id.

    Its test split may hold them: a run on the whole folder (``configs/standard.py``) keeps the
    held-out block as its test split, which it never trains or selects on.

    Args:
      workdir: the trained workdir.
      heldout_ids: the ids to be scored.

    Raises:
      ValueError: a held-out id was in the run's training or validation split.
    """
    split = read_split_file(workdir)
    if split is None:
        path = os.path.join(workdir, layout.SPLIT_FILE)
        print(f"warning: {path} is missing; cannot check that the held-out slices are unseen.")
        return
    for name in ("train", "validation"):
        seen = sorted(heldout_ids & set(split.get(name, [])), key=sources.id_sort_key)
        if seen:
            raise ValueError(
                f"{len(seen)} held-out id(s) are in the {name} split of {workdir} "
                f"(e.g. {seen[:5]}): it trained or selected on the patients it would be scored on."
            )


def select(examples: list[sources.Example], max_images: int) -> list[sources.Example]:
    """``max_images`` of the examples, evenly spaced in id order (all of them for 0).

    Evenly spaced, so a short run still covers every tumour type (the ids are sorted by type
    block).
    """
    if max_images <= 0:
        return list(examples)
    keep = np.linspace(0, len(examples) - 1, min(max_images, len(examples)))
    return [examples[i] for i in np.unique(keep.round().astype(int))]


def training_seconds(workdir: str) -> float | None:
    """Training wall time of a run, read from its files.

    A ``train_wall_s`` (or ``wall_s``) value in the last row of ``metrics.jsonl`` wins; otherwise
    the time from writing ``config.json`` (the run's start, after imports) to the newest file of
    ``predictions/`` or ``eval_validation.json`` (its end).

    Args:
      workdir: the trained workdir.

    Returns:
      Seconds, or None when the files do not tell.
    """
    rows_path = os.path.join(workdir, layout.METRICS_JSONL)
    if os.path.isfile(rows_path):
        with open(rows_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for key in ("train_wall_s", "wall_s"):
            if rows and key in rows[-1]:
                return float(rows[-1][key])
    start_path = os.path.join(workdir, layout.CONFIG_FILE)
    ends = [os.path.join(workdir, layout.eval_file("validation"))]
    predictions = os.path.join(workdir, layout.PREDICTIONS_DIR)
    if os.path.isdir(predictions):
        ends += [os.path.join(predictions, name) for name in os.listdir(predictions)]
    ends = [p for p in ends if os.path.isfile(p)]
    if not os.path.isfile(start_path) or not ends:
        return None
    return max(os.path.getmtime(p) for p in ends) - os.path.getmtime(start_path)


def score(
    workdir: str, examples: list[sources.Example], batch_size: int
) -> tuple[dict[str, float | int], list[float]]:
    """Predicts every example at its own size and scores it (docs/design.md section 4 metrics).

    Args:
      workdir: the trained workdir (best checkpoint).
      examples: the slices to score (paths).
      batch_size: images per forward pass.

    Returns:
      ``(result, per_image_dice)``: `bts_jax.inference.scoring.evaluate_examples`' metrics plus
      ``pred_empty_share``; the Dice of each example, in id order.
    """
    found = evaluate_examples(workdir, examples, batch_size=batch_size)
    result = dict(found.metrics)
    result["pred_empty_share"] = float(
        np.mean([row["pred_pixels"] == 0 for row in found.per_image])
    )
    return result, [row["dice"] for row in found.per_image]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "quickstart"))
    parser.add_argument(
        "--data_dir", default=bench_flags.SHARED_DATA_DIR, help="The figshare folder."
    )
    parser.add_argument("--heldout_fraction", type=float, default=bench_flags.HELDOUT_FRACTION)
    parser.add_argument("--max_images", type=int, default=0, help="0 = every held-out slice.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--json", default="", help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)

    try:
        examples = splits.heldout_block(args.data_dir, args.heldout_fraction)
        check_unseen(args.workdir, {e.id for e in examples})
    except (OSError, ValueError) as error:  # No folder, or a run that saw these patients.
        parser.exit(2, f"heldout_quickstart.py: {type(error).__name__}: {error}\n")
    examples = select(examples, args.max_images)
    start = time.perf_counter()
    result, _ = score(args.workdir, examples, args.batch_size)
    predict_s = time.perf_counter() - start
    train_s = training_seconds(args.workdir)
    counts = {
        name: sum(e.label == label for e in examples)
        for label, name in enumerate(sources.TUMOUR_TYPES)
        if label
    }

    def duration(seconds):
        return "unknown" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))

    # Counts print as counts (the metrics dict holds floats).
    num_images, num_missed = int(result["num_images"]), int(result["num_pred_empty_only"])
    print(f"workdir: {os.path.abspath(args.workdir)}")
    print(
        f"held-out slices: {num_images} "
        f"({', '.join(f'{n} {name}' for name, n in counts.items())}) from {args.data_dir}"
    )
    print(f"tumour Dice (all pixels): {result['dice']:.4f}")
    print(f"tumour Dice (mean per image): {result['dice_per_image']:.4f}")
    print(f"mIoU: {result['miou']:.4f} (tumour IoU {result['iou_tumour']:.4f})")
    print(f"HD95 (mean per image): {result['hd95_mm']:.2f} mm")
    print(
        f"empty predictions: {num_missed} of {num_images} ({100 * result['pred_empty_share']:.1f}%)"
    )
    print(f"training wall time (from the workdir's files): {duration(train_s)}")
    print(f"prediction time: {predict_s:.1f} s")
    if args.json:
        jsonio.write_json(
            args.json, {**result, "train_s": train_s, "predict_s": predict_s}, indent=1
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
