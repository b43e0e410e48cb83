"""Segments images of any size with a trained workdir: a mask PNG and an overlay PNG per image.

    python predict.py --workdir workdirs/quickstart --inputs scans/ --output_dir predictions/
    python predict.py --workdir workdirs/quickstart --inputs a.png,b.jpg --output_dir out/ \
        --which latest

Writes ``<stem>_mask.png`` (0/255, the input's size) and ``<stem>_overlay.png`` (predicted contour
in red on the image) per input. Needs only the workdir, not the training data. If any input cannot
be read, nothing is written and the error lists the files; with ``--skip_unreadable`` the others
are predicted and the skipped files are listed at the end (the exit status is then 1 too).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A directory written by train.py.")
flags.DEFINE_list("inputs", None, "Image files and/or folders, comma-separated.")
flags.DEFINE_string("output_dir", None, "Folder for the mask and overlay PNGs.")
flags.DEFINE_enum(
    "which", "best", ["best", "latest"], "Checkpoint: best validation mIoU or latest."
)
flags.DEFINE_integer("batch_size", 8, "Images per forward pass.")
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
    quiet_library_logs()

    from bts_jax import inference

    try:
        written = inference.predict_files(
            FLAGS.workdir,
            FLAGS.inputs,
            FLAGS.output_dir,
            which=FLAGS.which,
            batch_size=FLAGS.batch_size,
            skip_unreadable=FLAGS.skip_unreadable,
        )
    except inference.UnreadableInputsError as e:
        _report_written(e.written)
        sys.exit(f"Error: {e}")
    _report_written(written)


def _report_written(written: list[str]) -> None:
    if written:
        print(
            f"Wrote {len(written) // 2} masks and {len(written) // 2} overlays to "
            f"{os.path.abspath(FLAGS.output_dir)}"
        )


if __name__ == "__main__":
    app.run(main)
