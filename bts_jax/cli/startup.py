"""A quiet start for the command-line programs, and clear errors instead of tracebacks.

Before the first TensorFlow import, `quiet_start` sets ``TF_CPP_MIN_LOG_LEVEL`` so TensorFlow's C++
INFO notices (CPU features, oneDNN) stay silent; after absl set up its handler,
`quiet_library_logs` drops the routine INFO records of libraries (Orbax, TFDS, and JAX's search
for a TPU backend on machines without one). `run_program` runs a program's ``main`` with absl and
reports the errors a user can fix (a missing file, a bad setting, a workdir in use) as one line
naming the problem, not a traceback; ``BTS_JAX_TRACEBACK=1`` shows the traceback as well.
"""

import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

# Libraries whose routine INFO records drown a run's own log (matched in the record's file path).
NOISY_LIBRARIES = ("orbax", "tensorflow_datasets", "jax/_src/xla_bridge")

# Errors that bts_jax raises for input a user can fix; each message names the file or setting.
USER_ERRORS = (OSError, ValueError, RuntimeError, FloatingPointError, KeyError)


def quiet_start() -> None:
    """Silences TensorFlow's C++ INFO notices and Matplotlib's font-cache notice.

    Call it before TensorFlow is imported (the entry points call it first). The variables are
    only defaults: a user who sets them keeps their value.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # "Matplotlib is building the font cache" on a fresh install: a warning about nothing wrong.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


class QuietLibraries(logging.Filter):
    """Drops INFO-and-below records logged from the files of ``NOISY_LIBRARIES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keeps warnings and errors, and every record of other code."""
        noisy = any(name in record.pathname for name in NOISY_LIBRARIES)
        return record.levelno > logging.INFO or not noisy


def quiet_library_logs() -> None:
    """Installs :class:`QuietLibraries` on absl's handler (call once, after absl set it up)."""
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, QuietLibraries) for f in handler.filters):
        handler.addFilter(QuietLibraries())


def _with_clear_errors(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
    def run(argv: list[str]) -> object:
        quiet_library_logs()
        try:
            return main(argv)
        except USER_ERRORS as e:
            if os.environ.get("BTS_JAX_TRACEBACK"):
                raise
            sys.exit(f"{type(e).__name__}: {e}")

    return run


# absl's own --help lists only the flags of the module named like argv[0]: a console command
# (bts-train) or a two-line script defines none, its program's module does.
HELP_FLAGS = frozenset({"-h", "--help", "-?", "--helpshort"})


def print_program_help(main: Callable[[list[str]], object]) -> None:
    """Prints the program's docstring and the flags of the bts_jax.cli modules it loaded.

    Args:
      main: the program's ``main``; its module's docstring says what it does and how to call it.
    """
    module = sys.modules.get(main.__module__)
    print(f"USAGE: {os.path.basename(sys.argv[0])} [flags]", end="\n\n")
    print((getattr(module, "__doc__", None) or "").strip(), end="\n\n")
    for name in sorted(flags.FLAGS.flags_by_module_dict()):
        if name.startswith("bts_jax.cli"):
            print(flags.FLAGS.module_help(name), end="\n\n")


def run_program(
    main: Callable[[list[str]], object], argv_filter: Callable[[list[str]], list[str]] | None = None
) -> None:
    """Runs an entry point's ``main(argv)`` with absl, quietly and with clear errors.

    Args:
      main: the program; its flags are defined before this is called.
      argv_filter: rewrites the command line before absl parses it (e.g. resolves a config
        preset); its errors are reported like the program's.
    """
    argv = sys.argv
    if HELP_FLAGS & set(argv[1:]):
        print_program_help(main)
        return
    if argv_filter is not None:
        from bts_jax.config_tools import UnknownFieldError

        try:
            argv = argv_filter(argv)
        except UnknownFieldError as e:
            # A usage error, like absl's for a flag it does not know: one line, status 2.
            print(f"{os.path.basename(argv[0])}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except USER_ERRORS as e:
            sys.exit(f"{type(e).__name__}: {e}")
    app.run(_with_clear_errors(main), argv=argv)
