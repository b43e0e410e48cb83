"""Evaluates a trained workdir's checkpoint on a split: prints every metric and saves them as JSON.

    python evaluate.py --workdir workdirs/quickstart
    python evaluate.py --workdir workdirs/quickstart --split train --which latest
    python evaluate.py --workdir workdirs/quickstart --tta --keep_largest
    python evaluate.py --workdir workdirs/seed0,workdirs/seed1,workdirs/seed2
    python evaluate.py --workdir workdirs/quickstart --data_dir /path/to/labelled_folder

The config is the one the run saved (``<workdir>/config.json``), so the data source and split are
those of training; the metrics go to ``<workdir>/eval_<split>.json``, scored and written by the
function the end of training uses (`bts_jax.train.score_split`), so the files hold the same numbers.

With several workdirs (an ensemble: their probabilities are averaged), TTA, another threshold,
post-processing or an --output_dir, the predictions of `bts_jax.inference` are scored instead, on
the first workdir's split, at the model's input size and without a loss; they go to
``<first workdir>/eval_<split>_<tag>.json`` and ``per_image_<split>_<tag>.csv`` (or into
``--output_dir``), the tag naming the settings (e.g. ``ensemble3_tta-flips_largest``).

With ``--data_dir``, any labelled folder in the Kaggle layout is scored instead, each image at its
own size, with the same metrics: ``eval_folder_<tag>.json`` and ``per_image_folder_<tag>.csv``.
"""

import os

from absl import flags

from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of ``evaluate.py``."""
    cli_flags.define_prediction_flags()
    cli_flags.define_split_flag()
    cli_flags.define_output_dir_flag("Folder for the JSON/CSV of a settings evaluation.")
    cli_flags.define_data_dir_flag(
        "Score on this labelled folder (images/, masks/, optional metadata.csv) at each image's "
        "own size, instead of a split of the training data."
    )


def print_metrics(result: dict, title: str) -> None:
    """Prints ``title`` and every number of ``result``, counts as integers."""
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float)}
    width = max(map(len, numbers))
    print(title)
    for key in sorted(numbers):
        value = numbers[key]
        shown = f"{int(value)}" if key == "step" or key.startswith("num_") else f"{value:.4f}"
        print(f"  {key:<{width}}  {shown}")


def main(argv: list[str]) -> None:
    """Scores a checkpoint, an ensemble or prediction settings, on a split or a labelled folder."""
    cli_flags.no_extra_arguments(argv)
    settings = cli_flags.settings_from_flags()
    workdirs = FLAGS.workdir

    from bts_jax.inference import scoring, settings_tag

    tag = settings_tag(len(workdirs), settings)
    # "best checkpoint of RUN", or "best checkpoints of A, B" for an ensemble.
    scored = f"{FLAGS.which} checkpoint{'s' if len(workdirs) > 1 else ''} of {', '.join(workdirs)}"
    if FLAGS.data_dir:
        record = {"prediction": scoring.prediction_record(workdirs, FLAGS.which, settings)}
        found, json_path = scoring.score_examples(
            workdirs,
            scoring.folder_examples(FLAGS.data_dir),
            FLAGS.output_dir or workdirs[0],
            f"folder_{tag}",
            which=FLAGS.which,
            settings=settings,
            record=record,
        )
        metrics = found.metrics
        title = f"{scored} on {os.path.abspath(FLAGS.data_dir)} (each image at its own size):"
    else:
        metrics, json_path = scoring.score_split(
            workdirs,
            FLAGS.split,
            which=FLAGS.which,
            settings=settings,
            output_dir=FLAGS.output_dir,
        )
        title = f"{scored} on {FLAGS.split} ({tag}):"
    print_metrics(metrics, title)
    suffix = " and its per_image CSV" if FLAGS.data_dir else ""
    print(f"Saved {os.path.abspath(json_path)}{suffix}")


def run() -> None:
    """The ``evaluate.py`` program."""
    define_flags()
    run_program(main)
