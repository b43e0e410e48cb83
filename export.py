"""Exports a trained workdir for deployment: a jax.export artifact, its preprocessing, a SavedModel.

    python export.py --workdir workdirs/quickstart --output exported/quickstart
    python export.py --workdir workdirs/seed0,workdirs/seed1 --output exported/ensemble --tta \
        --nosaved_model

Writes ``model.jax_export`` (serialized StableHLO for CPU and CUDA, any batch size),
``preprocessing.json``, ``saved_model/`` (TensorFlow) and with ``--tflite`` ``model.tflite``
(batch size 1). Load the artifact with
``bts_jax.export.load_exported(DIR)``: it predicts from these files alone.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "A directory written by train.py, or several (an ensemble).")
flags.DEFINE_string("output", None, "Folder to write the exported model into.")
flags.DEFINE_enum(
    "which", "best", ["best", "latest"], "Checkpoint: best validation mIoU or latest."
)
flags.DEFINE_bool("tta", False, "Bake the 4-flip test-time augmentation into the function.")
flags.DEFINE_bool("tta_rot90", False, "With --tta: also the 90-degree rotations (8 views).")
flags.DEFINE_float("threshold", 0.5, "Decision threshold recorded for one-logit models.")
flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms to lower for.")
flags.DEFINE_bool("saved_model", True, "Also write a TensorFlow SavedModel.")
flags.DEFINE_bool("tflite", False, "Also write model.tflite (batch size 1, CPU).")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.tta_rot90 and not FLAGS.tta:
        raise app.UsageError("--tta_rot90 adds rotations to --tta: pass both.")
    quiet_library_logs()

    from bts_jax import export

    written = export.export_workdirs(
        FLAGS.workdir,
        FLAGS.output,
        which=FLAGS.which,
        tta="dihedral" if FLAGS.tta_rot90 else "flips" if FLAGS.tta else "none",
        threshold=FLAGS.threshold,
        platforms=FLAGS.platforms,
        saved_model=FLAGS.saved_model,
        tflite=FLAGS.tflite,
    )
    for path in written:
        print(f"Wrote {os.path.abspath(path)}")


if __name__ == "__main__":
    app.run(main)
