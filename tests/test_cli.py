import logging

from absl import logging as absl_logging

from bts_jax.cli.startup import QuietLibraries, quiet_library_logs


def _record(path, level):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_quiet_libraries_drops_only_routine_library_records():
    keep = QuietLibraries().filter
    assert not keep(_record("/site-packages/orbax/checkpoint/manager.py", logging.INFO))
    assert not keep(_record("/site-packages/tensorflow_datasets/core/x.py", logging.DEBUG))
    assert keep(_record("/site-packages/orbax/checkpoint/manager.py", logging.WARNING))
    assert keep(_record("/repo/bts_jax/train_lib.py", logging.INFO))


def test_quiet_library_logs_installs_one_filter():
    handler = absl_logging.get_absl_handler()
    quiet_library_logs()
    quiet_library_logs()
    assert sum(isinstance(f, QuietLibraries) for f in handler.filters) == 1
