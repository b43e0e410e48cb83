r"""Compares two trained workdirs on the same images (the paper's figure 8) in one PNG.

    python compare.py --workdir_a workdirs/unet --workdir_b workdirs/paper --output compare.png \
        --num_images 8 --names "U-Net,Improved U-Net"

Rows are the first ``--num_images`` images of workdir A's validation split; columns: image, ground
truth, model A, model B. Warns when the two runs were split differently.
"""

import os

from absl import flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``compare.py``."""
    flags.DEFINE_string("workdir_a", None, "First trained workdir; its split gives the images.")
    flags.DEFINE_string("workdir_b", None, "Second trained workdir.")
    cli_flags.define_output_flag("PNG file to write.")
    cli_flags.define_num_images_flag(8, "Number of images (rows).")
    flags.DEFINE_list("names", None, "Column titles of the two models; default the folder names.")
    cli_flags.define_split_flag()
    cli_flags.define_which_flag()
    flags.mark_flags_as_required(["workdir_a", "workdir_b"])


def main(argv: list[str]) -> None:
    """Draws the two models side by side."""
    cli_flags.no_extra_arguments(argv)

    from bts_jax.inference.compare import compare_workdirs

    path = compare_workdirs(
        FLAGS.workdir_a,
        FLAGS.workdir_b,
        FLAGS.output,
        num_images=FLAGS.num_images,
        names=FLAGS.names,
        split=FLAGS.split,
        which=FLAGS.which,
    )
    print(f"Wrote {os.path.abspath(path)}")


def run() -> None:
    """The ``compare.py`` program."""
    define_flags()
    run_program(main)
