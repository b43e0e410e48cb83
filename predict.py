"""Segments images of any size with a trained workdir: a mask PNG and an overlay PNG per image.

    python predict.py --workdir workdirs/quickstart --inputs scans/ --output_dir predictions/
    python predict.py --workdir workdirs/quickstart --inputs a.png,b.jpg --output_dir out/ \
        --which latest

Writes ``<stem>_mask.png`` (0/255, the input's size) and ``<stem>_overlay.png`` (predicted contour
in red on the image) per input. Needs only the workdir, not the training data. If any input cannot
be read, nothing is written and the error lists the files.
"""

import os

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
flags.mark_flags_as_required(["workdir", "inputs", "output_dir"])


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_library_logs()

    from bts_jax import inference

    written = inference.predict_files(
        FLAGS.workdir,
        FLAGS.inputs,
        FLAGS.output_dir,
        which=FLAGS.which,
        batch_size=FLAGS.batch_size,
    )
    print(
        f"Wrote {len(written) // 2} masks and {len(written) // 2} overlays to "
        f"{os.path.abspath(FLAGS.output_dir)}"
    )


if __name__ == "__main__":
    app.run(main)
