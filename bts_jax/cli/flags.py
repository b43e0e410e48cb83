"""Flags shared by the command-line programs, each defined once with one help text.

Flags are defined inside functions, called by a program before it runs, so that several programs
can be imported into one process (the tests do) without defining a flag twice.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from absl import app, flags

if TYPE_CHECKING:  # The programs import the inference stack only once their flags are parsed.
    from bts_jax.inference import PredictionSettings

FLAGS = flags.FLAGS
# The flags defined here belong to the program that calls a define_* function (its --help lists
# them), as if it had defined them itself.
flags.disclaim_key_flags()

CHECKPOINT_HELP = (
    "Checkpoint: best (validation mIoU), latest, or step:N (a save kept in checkpoints/)."
)


def define_config_flag(help_text: str, default: str | None = None, *, lock: bool = False) -> None:
    """``--config``: an experiment (or sweep) config file, its fields overridable one by one.

    Args:
      help_text: what the config is, for ``--help`` (train.py: an experiment, sweep.py: a sweep).
      default: the config file used without ``--config``; None makes the flag required.
      lock: lock the config, so a program cannot add fields to it by mistake.
    """
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", default, help_text, lock_config=lock)
    if default is None:
        flags.mark_flag_as_required("config")


def define_workdir_flag(help_text: str, *, several: bool = False) -> None:
    """``--workdir`` (required): a folder a program writes or reads.

    Args:
      help_text: what the folder is for this program.
      several: a comma-separated list of folders (an ensemble), else one folder.
    """
    if several:
        flags.DEFINE_list("workdir", None, help_text)
    else:
        flags.DEFINE_string("workdir", None, help_text)
    flags.mark_flag_as_required("workdir")


def define_workdirs_flag() -> None:
    """``--workdir``: one trained workdir, or several (an ensemble: probabilities averaged)."""
    define_workdir_flag("A directory written by train.py, or several (an ensemble).", several=True)


def define_split_flag() -> None:
    """``--split``: the split of the run's own data a program reads."""
    flags.DEFINE_enum(
        "split",
        "validation",
        ["validation", "test", "train"],
        "Split of the run's data (data_split.json) to read.",
    )


def define_model_stats_flag() -> None:
    """``--model_stats``: count each variant's parameters and GFLOPs for a sweep's report."""
    flags.DEFINE_bool(
        "model_stats",
        True,
        "Count parameters and GFLOPs of each variant's model in the report (one XLA compilation "
        "per variant).",
    )


def define_output_flag(help_text: str) -> None:
    """``--output`` (required): the one file or folder a program writes.

    Args:
      help_text: what is written there.
    """
    flags.DEFINE_string("output", None, help_text)
    flags.mark_flag_as_required("output")


def define_output_dir_flag(help_text: str) -> None:
    """``--output_dir``: the folder of a program's files.

    Args:
      help_text: what goes there (and where it goes without the flag).
    """
    flags.DEFINE_string("output_dir", None, help_text)


def define_data_dir_flag(help_text: str, default: str | None = None) -> None:
    """``--data_dir``: a labelled folder to score on (images/, masks/, optional metadata.csv).

    Args:
      help_text: what the program does with it.
      default: the folder used without the flag (None: none).
    """
    flags.DEFINE_string("data_dir", default, help_text)


def define_batch_size_flag(default: int = 8) -> None:
    """``--batch_size``: images per forward pass of a prediction.

    Args:
      default: the program's default.
    """
    flags.DEFINE_integer("batch_size", default, "Images per forward pass (times the TTA views).")


def define_num_images_flag(default: int, help_text: str) -> None:
    """``--num_images``: how many images a program draws or times.

    Args:
      default: the program's default.
      help_text: what they are for.
    """
    flags.DEFINE_integer("num_images", default, help_text)


def define_which_flag() -> None:
    """``--which``: the best or the latest checkpoint, or a kept save by its step."""
    from bts_jax.workdir import check_which  # Where the forms a save is named by live.

    flags.DEFINE_string("which", "best", CHECKPOINT_HELP)

    def valid(value: str) -> bool:
        try:
            return bool(check_which(value))
        except ValueError:
            return False

    flags.register_validator("which", valid, "--which: best, latest or step:N (N a kept step)")


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


def config_value(argv: list[str]) -> str | None:
    """The value of ``--config`` on a command line (``--config=X`` or ``--config X``), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def config_overrides(argv: list[str]) -> list[str]:
    """The dotted fields that ``--config.<field>=value`` arguments of a command line set.

    Args:
      argv: the command line.

    Returns:
      The fields, without ``config.``, in order (``["optimizer.learning_rate"]``).
    """
    prefixes = ("--config.", "--noconfig.")
    return [
        arg.split("=", 1)[0].split(".", 1)[1]
        for arg in argv
        if arg.startswith(prefixes) and len(arg.split("=", 1)[0]) > len("--config.")
    ]


def check_config_arguments(argv: list[str], kind: str = "experiment") -> None:
    """Refuses a config with a field it should not have, before absl parses the command line.

    An experiment config file may only set the fields of the default config
    (``configs/default.py``), and ``--config.<field>`` only the fields of the config it names;
    otherwise ml_collections would fail inside flag parsing with a traceback (or, in a file, add a
    field that nothing reads).

    Args:
      argv: the command line, ``--config`` already a file (`resolve_config_argument`).
      kind: "experiment" (checked against the default config too) or "sweep".

    Raises:
      bts_jax.config_tools.UnknownFieldError: one line naming the field and the closest valid
        ones.
    """
    from bts_jax import config_tools
    from bts_jax.configs import default

    value = config_value(argv)
    if value is None:
        return  # absl says the flag is missing.
    path, _, argument = value.partition(":") if not os.path.exists(value) else (value, "", "")
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    schema = default.get_config() if kind == "experiment" else {}
    config = _load_config(path, argument or None, schema, shown)
    if kind == "experiment":
        config_tools.check_fields(config, schema, shown)
    fields = config_tools.field_names(config)
    for name in config_overrides(argv):
        if name not in fields:
            message = config_tools.unknown_field_message(name, fields, shown)
            raise config_tools.UnknownFieldError(f"--{message}")


def _load_config(path: str, argument: str | None, schema: Any, shown: str) -> Any:
    """The config file's ``get_config()``; a field it reads but the config lacks is named."""
    from bts_jax import config_tools

    try:
        return config_tools.load_config_file(path, argument=argument)
    except (AttributeError, KeyError) as e:
        missing = _missing_config_key(e)
        if missing is None:
            raise
        close = config_tools.closest_fields(missing, config_tools.field_names(schema))
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        raise config_tools.UnknownFieldError(
            f"{shown}: get_config() reads {missing!r}, which is not a field of the config{hint}"
        ) from None


def _missing_config_key(error: Exception) -> str | None:
    # A ConfigDict raises AttributeError(KeyError("'name'")) for a field it lacks, KeyError for
    # config["name"]; any other AttributeError is a bug of the file's own, left to its traceback.
    if isinstance(error, AttributeError):
        if not (error.args and isinstance(error.args[0], KeyError)):
            return None
        error = error.args[0]
    # Its first line is the quoted name; ml_collections may add a hint of its own below.
    text = str(error.args[0]) if error.args else ""
    return text.splitlines()[0].strip("\"'") if text else None


def prepare_config_argument(argv: list[str], kind: str = "experiment") -> list[str]:
    """`resolve_config_argument`, then `check_config_arguments`: a run's ``--config``, checked.

    Args:
      argv: the command line (``sys.argv``).
      kind: "experiment" or "sweep".

    Returns:
      The command line to parse.

    Raises:
      FileNotFoundError: no such config; bts_jax.config_tools.UnknownFieldError: see
        `check_config_arguments`.
    """
    argv = resolve_config_argument(argv, kind)
    check_config_arguments(argv, kind)
    return argv


def no_extra_arguments(argv: list[str]) -> None:
    """Refuses positional arguments a program does not take.

    Raises:
      absl.app.UsageError: naming them.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
