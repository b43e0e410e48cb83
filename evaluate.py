"""Evaluates a trained workdir's checkpoint on a split: prints every metric and saves them as JSON.

    python evaluate.py --workdir workdirs/quickstart
    python evaluate.py --workdir workdirs/quickstart --split train --which latest
    python evaluate.py --workdir workdirs/quickstart --tta --keep_largest
    python evaluate.py --workdir workdirs/seed0,workdirs/seed1,workdirs/seed2
    python evaluate.py --workdir workdirs/quickstart --data_dir /path/to/labelled_folder

The config is the one the run saved (``<workdir>/config.json``), so the data source and split are
those of training; the metrics go to ``<workdir>/eval_<split>.json``.

With several workdirs (an ensemble: their probabilities are averaged), TTA, another threshold,
post-processing or an --output_dir, the predictions of `bts_jax.inference` are scored instead, on
the first workdir's split, at the model's input size and without a loss; they go to
``<first workdir>/eval_<split>_<tag>.json`` and ``per_image_<split>_<tag>.csv`` (or into
``--output_dir``), the tag naming the settings (e.g. ``ensemble3_tta-flips_largest``).

With ``--data_dir``, any labelled folder in the Kaggle layout is scored instead, each image at its
own size, with the same metrics: ``eval_folder_<tag>.json`` and ``per_image_folder_<tag>.csv``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from bts_jax.logs import quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "A directory written by train.py, or several (an ensemble).")
flags.DEFINE_enum("split", "validation", ["validation", "test", "train"], "Split to evaluate.")
flags.DEFINE_enum(
    "which", "best", ["best", "latest"], "Checkpoint: best validation mIoU or latest."
)
flags.DEFINE_bool("tta", False, "Average the probabilities over the 4 flips of each image.")
flags.DEFINE_bool("tta_rot90", False, "With --tta: also the 90-degree rotations (8 views).")
flags.DEFINE_float("threshold", 0.5, "Tumour where the probability is above it (one logit).")
flags.DEFINE_bool("keep_largest", False, "Keep only the largest tumour component of each mask.")
flags.DEFINE_integer("min_size", 0, "Drop tumour components under this many (model) pixels.")
flags.DEFINE_string("output_dir", None, "Folder for the JSON/CSV of a settings evaluation.")
flags.DEFINE_string(
    "data_dir",
    None,
    "Score on this labelled folder (images/, masks/, optional metadata.csv) at each image's own "
    "size, instead of a split of the training data.",
)
flags.mark_flags_as_required(["workdir"])


def _print(result, title):
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float)}
    width = max(map(len, numbers))
    print(title)
    for key in sorted(numbers):
        value = numbers[key]
        shown = f"{int(value)}" if key == "step" or key.startswith("num_") else f"{value:.4f}"
        print(f"  {key:<{width}}  {shown}")


def main(argv):
    """Entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.tta_rot90 and not FLAGS.tta:
        raise app.UsageError("--tta_rot90 adds rotations to --tta: pass both.")
    quiet_library_logs()

    from bts_jax import checkpointing, inference, prediction_evaluation, train_lib

    settings = inference.PredictionSettings(
        tta="dihedral" if FLAGS.tta_rot90 else "flips" if FLAGS.tta else "none",
        threshold=FLAGS.threshold,
        keep_largest=FLAGS.keep_largest,
        min_size=FLAGS.min_size,
    )
    workdirs = FLAGS.workdir
    if FLAGS.data_dir:
        found, labels = prediction_evaluation.evaluate_folder(
            workdirs, FLAGS.data_dir, which=FLAGS.which, settings=settings
        )
        json_path, _ = prediction_evaluation.write_prediction_evaluation(
            found,
            workdirs,
            "folder",
            which=FLAGS.which,
            settings=settings,
            output_dir=FLAGS.output_dir,
            labels=labels,
        )
        _print(
            found.metrics,
            f"{FLAGS.which} checkpoint(s) of {', '.join(workdirs)} on "
            f"{os.path.abspath(FLAGS.data_dir)} (each image at its own size):",
        )
        print(f"Saved {os.path.abspath(json_path)} and its per_image CSV")
        return
    if len(workdirs) == 1 and settings == inference.PredictionSettings() and not FLAGS.output_dir:
        (workdir,) = workdirs
        config = checkpointing.load_config(workdir)
        result = train_lib.evaluate_checkpoint(config, workdir, FLAGS.split, which=FLAGS.which)
        _print(result, f"{FLAGS.which} checkpoint of {workdir} on {FLAGS.split}:")
        print(f"Saved {os.path.join(os.path.abspath(workdir), f'eval_{FLAGS.split}.json')}")
        return
    found = prediction_evaluation.evaluate_predictions(
        workdirs, FLAGS.split, which=FLAGS.which, settings=settings
    )
    json_path, _ = prediction_evaluation.write_prediction_evaluation(
        found,
        workdirs,
        FLAGS.split,
        which=FLAGS.which,
        settings=settings,
        output_dir=FLAGS.output_dir,
    )
    _print(
        found.metrics,
        f"{FLAGS.which} checkpoints of {', '.join(workdirs)} on {FLAGS.split} "
        f"({prediction_evaluation.settings_tag(len(workdirs), settings)}):",
    )
    print(f"Saved {os.path.abspath(json_path)}")


if __name__ == "__main__":
    app.run(main)
