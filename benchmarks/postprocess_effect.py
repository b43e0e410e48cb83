"""Measures what TTA and post-processing do to a trained model's scores on a split.

    python benchmarks/postprocess_effect.py --workdir workdirs/quickstart
    python benchmarks/postprocess_effect.py --workdir workdirs/s0,workdirs/s1 --min_sizes=20,100

Prints one table row per setting (plain model, flips, flips + 90-degree rotations, the largest
component, small components dropped, TTA with the largest component): the global tumour Dice (from
the split's summed confusion counts), the mean per-image Dice, mIoU, mean HD95 and the images whose
tumour was missed or invented. Masks are scored at the model's input size, as train.py and
evaluate.py score them, so ``--min_sizes`` count pixels of the model's input. Several workdirs are
scored as an ensemble.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import quiet_library_logs
from bts_jax.inference import PredictionSettings
from bts_jax.inference.scoring import evaluate_settings

FLAGS = flags.FLAGS
cli_flags.define_workdirs_flag()
cli_flags.define_split_flag()
cli_flags.define_which_flag()
flags.DEFINE_list("min_sizes", ["10", "50"], "Component sizes (model pixels) to try dropping.")


def candidate_settings(min_sizes: list[int]) -> dict[str, PredictionSettings]:
    """The settings compared, by row label."""
    rows = {
        "plain": PredictionSettings(),
        "TTA flips (4 views)": PredictionSettings(tta="flips"),
        "TTA flips + rot90 (8 views)": PredictionSettings(tta="dihedral"),
        "largest component": PredictionSettings(keep_largest=True),
    }
    for size in min_sizes:
        rows[f"min_size {size}"] = PredictionSettings(min_size=size)
    rows["TTA flips + largest component"] = PredictionSettings(tta="flips", keep_largest=True)
    return rows


def main(argv):
    del argv
    quiet_library_logs()
    rows = candidate_settings([int(s) for s in FLAGS.min_sizes])
    found = evaluate_settings(FLAGS.workdir, list(rows.values()), FLAGS.split, which=FLAGS.which)
    print(f"{FLAGS.which} checkpoint(s) of {', '.join(FLAGS.workdir)}, {FLAGS.split} split:")
    print("| setting | tumour Dice | mean per-image Dice | mIoU | HD95 (px) | missed | invented |")
    print("|---|---|---|---|---|---|---|")
    for label, result in zip(rows, found, strict=True):
        m = result.metrics
        print(
            f"| {label} | {m['dice']:.4f} | {m['dice_per_image']:.4f} | {m['miou']:.4f} | "
            f"{m['hd95_px']:.2f} | {int(m['num_pred_empty_only'])} | "
            f"{int(m['num_gt_empty_only'])} |"
        )
    print(f"({int(found[0].metrics['num_images'])} images)")


if __name__ == "__main__":
    app.run(main)
