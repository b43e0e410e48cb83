"""Flags shared by the command-line programs, each defined once with one help text.

Flags are defined inside functions, called by a program before it runs, so that several programs
can be imported into one process (the tests do) without defining a flag twice.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from absl import app, flags

if TYPE_CHECKING:  # The programs import the inference stack only once their flags are parsed.
    from bts_jax.inference import PredictionSettings

FLAGS = flags.FLAGS

CHECKPOINT_HELP = "Checkpoint: best validation mIoU or latest."


def define_workdirs_flag() -> None:
    """``--workdir``: one trained workdir, or several (an ensemble: probabilities averaged)."""
    flags.DEFINE_list("workdir", None, "A directory written by train.py, or several (an ensemble).")
    flags.mark_flag_as_required("workdir")


def define_which_flag() -> None:
    """``--which``: the best or the latest checkpoint."""
    flags.DEFINE_enum("which", "best", ["best", "latest"], CHECKPOINT_HELP)


def define_tta_flags(*, baked: bool = False) -> None:
    """``--tta`` and ``--tta_rot90``: test-time augmentation over flips (and rotations).

    Args:
      baked: help text for export, which bakes the views into the exported function.
    """
    verb = (
        "Bake the 4-flip test-time augmentation into the function."
        if baked
        else ("Average the probabilities over the 4 flips of each image.")
    )
    flags.DEFINE_bool("tta", False, verb)
    flags.DEFINE_bool("tta_rot90", False, "With --tta: also the 90-degree rotations (8 views).")


def define_threshold_flag() -> None:
    """``--threshold``: the tumour probability above which a pixel is tumour."""
    flags.DEFINE_float(
        "threshold", 0.5, "Tumour where the probability is above it (one-logit models)."
    )


def define_postprocessing_flags() -> None:
    """``--keep_largest`` and ``--min_size``: connected-component clean-up of the masks."""
    flags.DEFINE_bool("keep_largest", False, "Keep only the largest tumour component of each mask.")
    flags.DEFINE_integer(
        "min_size",
        0,
        "Drop tumour components under this many pixels (of the mask they are removed from: the "
        "input's size in prediction, the model's input size in evaluation).",
    )


def define_prediction_flags() -> None:
    """Every flag of a prediction: workdirs, checkpoint, TTA, threshold, post-processing."""
    define_workdirs_flag()
    define_which_flag()
    define_tta_flags()
    define_threshold_flag()
    define_postprocessing_flags()


def tta_from_flags() -> str:
    """The TTA mode of ``--tta``/``--tta_rot90``: "none", "flips" or "dihedral".

    Raises:
      absl.app.UsageError: ``--tta_rot90`` without ``--tta``.
    """
    if FLAGS.tta_rot90 and not FLAGS.tta:
        raise app.UsageError("--tta_rot90 adds rotations to --tta: pass both.")
    return "dihedral" if FLAGS.tta_rot90 else "flips" if FLAGS.tta else "none"


def settings_from_flags() -> PredictionSettings:
    """The `bts_jax.inference.PredictionSettings` of the prediction flags."""
    from bts_jax.inference import PredictionSettings

    return PredictionSettings(
        tta=tta_from_flags(),
        threshold=FLAGS.threshold,
        keep_largest=FLAGS.keep_largest,
        min_size=FLAGS.min_size,
    )


def resolve_config_argument(argv: list[str], kind: str = "experiment") -> list[str]:
    """``argv`` with the value of ``--config`` replaced by the config file it names.

    ``--config quickstart`` (a packaged preset), ``--config configs/quickstart.py`` (from any
    working directory) and ``--config my_config.py`` all become a file path, which
    ml_collections then loads; a ``:argument`` suffix (``--config=file.py:arg``) is kept.

    Args:
      argv: the command line (``sys.argv``).
      kind: "experiment" or "sweep" (`bts_jax.config_tools.resolve_config_file`).

    Returns:
      The command line to parse.

    Raises:
      FileNotFoundError: the value names no file and no preset (the presets are listed).
    """
    from bts_jax.config_tools import resolve_config_file

    def resolved(value: str) -> str:
        path, colon, argument = value, "", ""
        if ":" in value and not os.path.exists(value):
            path, colon, argument = value.rpartition(":")
        return resolve_config_file(path, kind) + colon + argument

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolved(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolved(out[i + 1])
    return out


def no_extra_arguments(argv: list[str]) -> None:
    """Refuses positional arguments a program does not take.

    Raises:
      absl.app.UsageError: naming them.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
