"""Flags shared by the benchmark scripts, each defined once (`bts_jax.cli.flags` for the programs).

A script calls the ``define_*`` functions it needs at import, then runs with ``absl.app.run``;
``benchmarks/`` is on ``sys.path`` for its scripts and for pytest, so ``import bench_flags`` works
from both. The flags that the programs share too (``--config``, ``--workdir``, ``--split``...) come
from `bts_jax.cli.flags`, so each flag name has one definition in the repository
(``tests/test_architecture.py`` checks it).
"""

import os

from absl import flags

from bts_jax.cli import flags as cli_flags

# The flags defined here belong to the script that calls a define_* function: its --help lists them.
flags.disclaim_key_flags()


def define_config_flag(default: str) -> None:
    """``--config``: the experiment config file timed, its fields overridable one by one.

    Args:
      default: the config file used without ``--config`` (from the repository root).
    """
    cli_flags.define_config_flag("Experiment config file.", default)


def define_step_flags(steps: int, warmup: int, steps_help: str = "Timed steps.") -> None:
    """``--steps`` (the measured steps) and ``--warmup`` (untimed steps after compilation).

    Args:
      steps: the default of ``--steps``.
      warmup: the default of ``--warmup``.
      steps_help: what the steps measure (timed, profiled, per run).
    """
    flags.DEFINE_integer("steps", steps, steps_help)
    flags.DEFINE_integer("warmup", warmup, "Untimed steps after compilation (0 = none).")


def define_image_size_flag(default: int, help_text: str) -> None:
    """``--image_size``: the input height and width a benchmark measures at.

    Args:
      default: the script's default.
      help_text: how the script uses it.
    """
    flags.DEFINE_integer("image_size", default, help_text)


# The shared folder beside the repository, and the share of each tumour type's last ids held out
# (the same as tools/make_sample_128.py's, which bundles only ids before those blocks).
SHARED_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
    "figshare_brain_tumor",
)
HELDOUT_FRACTION = 0.15


def define_heldout_flags() -> None:
    """``--data_dir``, ``--heldout_fraction``, ``--max_images``: the held-out patients scored.

    The last ``--heldout_fraction`` of each tumour type's ids of the folder, minus the bundled
    samples' ids (`bts_jax.data.splits.heldout_block`), ``--max_images`` of them evenly spaced.
    """
    cli_flags.define_data_dir_flag("The figshare folder (Kaggle layout).", SHARED_DATA_DIR)
    flags.DEFINE_float("heldout_fraction", HELDOUT_FRACTION, "Each type's last ids held out.")
    flags.DEFINE_integer("max_images", 0, "Score this many, evenly spaced (0 = every one).")
