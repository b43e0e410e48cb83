"""Segments images of any size with a trained workdir: a mask PNG and an overlay PNG per image.

    python predict.py --workdir workdirs/quickstart --inputs scans/ --output_dir predictions/
    python predict.py --workdir workdirs/quickstart --inputs a.png,b.jpg --output_dir out/ \
        --which latest
    python predict.py --workdir workdirs/quickstart --inputs scans/ --output_dir out/ \
        --tta --keep_largest --min_size 50 --save_probabilities png
    python predict.py --workdir workdirs/seed0,workdirs/seed1,workdirs/seed2 --inputs scans/ \
        --output_dir out/

Writes ``<stem>_mask.png`` (0/255, the input's size) and ``<stem>_overlay.png`` (predicted contour
in red on the image) per input, ``<stem>_prob.png`` (16-bit, probability * 65535) or
``<stem>_prob.npy`` (float32) with ``--save_probabilities``, and ``prediction_settings.json``
(workdirs, checkpoint steps, TTA, threshold, post-processing). Several workdirs form an ensemble:
their probabilities are averaged (they must share the preprocessing and classes). Needs only the
workdirs, not the training data. If any input cannot be read, nothing is written and the error
lists the files; with ``--skip_unreadable`` the others are predicted and the skipped files are
listed at the end (the exit status is then 1 too).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "A directory written by train.py, or several (an ensemble).")
flags.DEFINE_list("inputs", None, "Image files and/or folders, comma-separated.")
flags.DEFINE_string("output_dir", None, "Folder for the mask and overlay PNGs.")
flags.DEFINE_enum(
    "which", "best", ["best", "latest"], "Checkpoint: best validation mIoU or latest."
)
flags.DEFINE_integer("batch_size", 8, "Images per forward pass (times the TTA views).")
flags.DEFINE_bool("tta", False, "Average the probabilities over the 4 flips of each image.")
flags.DEFINE_bool("tta_rot90", False, "With --tta: also the 90-degree rotations (8 views).")
flags.DEFINE_float("threshold", 0.5, "Tumour where the probability is above it (one logit).")
flags.DEFINE_bool("keep_largest", False, "Keep only the largest tumour component of each mask.")
flags.DEFINE_integer("min_size", 0, "Drop tumour components under this many pixels.")
flags.DEFINE_enum(
    "save_probabilities", None, ["png", "npy"], "Also write the probability maps in this format."
)
flags.DEFINE_bool(
    "skip_unreadable",
    False,
    "Predict the readable inputs when some cannot be read; list the skipped ones at the end and "
    "exit with status 1.",
)
flags.mark_flags_as_required(["workdir", "inputs", "output_dir"])


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.tta_rot90 and not FLAGS.tta:
        raise app.UsageError("--tta_rot90 adds rotations to --tta: pass both.")
    quiet_library_logs()

    from bts_jax import inference

    settings = inference.PredictionSettings(
        tta="dihedral" if FLAGS.tta_rot90 else "flips" if FLAGS.tta else "none",
        threshold=FLAGS.threshold,
        keep_largest=FLAGS.keep_largest,
        min_size=FLAGS.min_size,
    )
    try:
        written = inference.predict_files(
            FLAGS.workdir,
            FLAGS.inputs,
            FLAGS.output_dir,
            which=FLAGS.which,
            batch_size=FLAGS.batch_size,
            settings=settings,
            save_probabilities=FLAGS.save_probabilities,
            skip_unreadable=FLAGS.skip_unreadable,
        )
    except inference.UnreadableInputsError as e:
        _report_written(e.written)
        sys.exit(f"Error: {e}")
    _report_written(written)


def _report_written(written: list[str]) -> None:
    if not written:
        return
    per_input = 3 if FLAGS.save_probabilities else 2
    count = len(written) // per_input
    maps = f" and {count} probability maps" if FLAGS.save_probabilities else ""
    print(f"Wrote {count} masks and {count} overlays{maps} to {os.path.abspath(FLAGS.output_dir)}")


if __name__ == "__main__":
    app.run(main)
