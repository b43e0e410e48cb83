"""Compares two trained workdirs on the same images (the paper's figure 8) in one PNG.

    python compare.py --workdir_a workdirs/unet --workdir_b workdirs/paper --output compare.png \
        --num_images 8 --names "U-Net,Improved U-Net"

Rows are the first ``--num_images`` images of workdir A's validation split; columns: image, ground
truth, model A, model B. Warns when the two runs were split differently.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir_a", None, "First trained workdir; its split gives the images.")
flags.DEFINE_string("workdir_b", None, "Second trained workdir.")
flags.DEFINE_string("output", None, "PNG file to write.")
flags.DEFINE_integer("num_images", 8, "Number of images (rows).")
flags.DEFINE_list("names", None, "Column titles of the two models; default the folder names.")
flags.DEFINE_enum(
    "split", "validation", ["validation", "test", "train"], "Split the images come from."
)
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of both models.")
flags.mark_flags_as_required(["workdir_a", "workdir_b", "output"])


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_library_logs()

    from bts_jax import figures

    path = figures.compare_workdirs(
        FLAGS.workdir_a,
        FLAGS.workdir_b,
        FLAGS.output,
        num_images=FLAGS.num_images,
        names=FLAGS.names,
        split=FLAGS.split,
        which=FLAGS.which,
    )
    print(f"Wrote {os.path.abspath(path)}")


if __name__ == "__main__":
    app.run(main)
