r"""Exports a trained workdir for deployment: a jax.export artifact, its preprocessing, SavedModel.

    python export.py --workdir workdirs/quickstart --output exported/quickstart
    python export.py --workdir workdirs/seed0,workdirs/seed1 --output exported/ensemble --tta \
        --nosaved_model

Writes ``model.jax_export`` (serialized StableHLO for CPU and CUDA, any batch size),
``preprocessing.json``, ``saved_model/`` (TensorFlow) and with ``--tflite`` ``model.tflite``
(batch size 1). Load the artifact with
``bts_jax.inference.export.load_exported(DIR)``: it predicts from these files alone.
"""

import os

from absl import flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``export.py``."""
    cli_flags.define_workdirs_flag()
    cli_flags.define_which_flag()
    cli_flags.define_tta_flags(baked=True)
    cli_flags.define_threshold_flag()
    cli_flags.define_output_flag("Folder to write the exported model into.")
    flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms to lower for.")
    flags.DEFINE_bool("saved_model", True, "Also write a TensorFlow SavedModel.")
    flags.DEFINE_bool("tflite", False, "Also write model.tflite (batch size 1, CPU).")


def main(argv: list[str]) -> None:
    """Exports the workdir(s) and lists the files written."""
    cli_flags.no_extra_arguments(argv)
    tta = cli_flags.tta_from_flags()

    from bts_jax.inference import export

    written = export.export_workdirs(
        FLAGS.workdir,
        FLAGS.output,
        which=FLAGS.which,
        tta=tta,
        threshold=FLAGS.threshold,
        platforms=FLAGS.platforms,
        saved_model=FLAGS.saved_model,
        tflite=FLAGS.tflite,
    )
    for path in written:
        print(f"Wrote {os.path.abspath(path)}")


def run() -> None:
    """The ``export.py`` program."""
    define_flags()
    run_program(main)
