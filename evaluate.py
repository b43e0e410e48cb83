"""Evaluates a trained workdir's checkpoint on a split: prints every metric and saves them as JSON.

    python evaluate.py --workdir workdirs/quickstart
    python evaluate.py --workdir workdirs/quickstart --split train --which latest

The config is the one the run saved (``<workdir>/config.json``), so the data source and split are
those of training; the metrics go to ``<workdir>/eval_<split>.json``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A directory written by train.py.")
flags.DEFINE_enum("split", "validation", ["validation", "test", "train"], "Split to evaluate.")
flags.DEFINE_enum(
    "which", "best", ["best", "latest"], "Checkpoint: best validation mIoU or latest."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_library_logs()

    from bts_jax import checkpointing, train_lib

    config = checkpointing.load_config(FLAGS.workdir)
    result = train_lib.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.split, which=FLAGS.which)
    width = max(map(len, result))
    print(f"{FLAGS.which} checkpoint of {FLAGS.workdir} on {FLAGS.split}:")
    for key in sorted(result):
        value = result[key]
        shown = f"{int(value)}" if key == "step" or key.startswith("num_") else f"{value:.4f}"
        print(f"  {key:<{width}}  {shown}")
    print(f"Saved {os.path.join(os.path.abspath(FLAGS.workdir), f'eval_{FLAGS.split}.json')}")


if __name__ == "__main__":
    app.run(main)
