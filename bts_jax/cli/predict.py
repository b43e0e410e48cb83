r"""Segments images of any size with a trained workdir: a mask PNG and an overlay PNG per image.

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

from absl import flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``predict.py``."""
    cli_flags.define_prediction_flags()
    flags.DEFINE_list("inputs", None, "Image files and/or folders, comma-separated.")
    cli_flags.define_output_dir_flag("Folder for the mask and overlay PNGs.")
    cli_flags.define_batch_size_flag()
    flags.DEFINE_enum(
        "save_probabilities",
        None,
        ["png", "npy"],
        "Also write the probability maps in this format.",
    )
    flags.DEFINE_bool(
        "skip_unreadable",
        False,
        "Predict the readable inputs when some cannot be read; list the skipped ones at the end "
        "and exit with status 1.",
    )
    flags.mark_flags_as_required(["inputs", "output_dir"])


def main(argv: list[str]) -> None:
    """Predicts every input and reports what was written."""
    cli_flags.no_extra_arguments(argv)
    settings = cli_flags.settings_from_flags()

    from bts_jax import inference

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


def run() -> None:
    """The ``predict.py`` program."""
    define_flags()
    run_program(main)
