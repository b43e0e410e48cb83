"""Log hygiene for the entry scripts."""

import logging

from absl import logging as absl_logging

# Libraries whose routine INFO records drown a run's own log.
NOISY_LIBRARIES = ("orbax", "tensorflow_datasets")


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
