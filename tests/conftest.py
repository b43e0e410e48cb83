"""Test set-up: 8 fake CPU devices, so that tests run the sharded code path by default.

(Tests that pass a mesh of their own choose fewer: the shared trained workdir trains on one.)

This must run before JAX initialises its backend, hence at conftest import time.
"""

import os
import tempfile

# Keep TensorFlow quiet and off any accelerator; it only feeds the input pipeline.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test programs are tiny, so XLA's CPU compile time dominates: skip LLVM's optimisations (halves
# compile time, numerics unchanged) and share compiled programs between tests, test processes and
# subprocesses through the persistent cache. Environment variables, so subprocesses inherit them.
# Every program goes to the cache, however quick its compile: models run eagerly in the tests
# compile each operation on its own (~20 ms each, hundreds per test file), which every worker and
# every subprocess would otherwise compile again (tests/test_models.py run twice: 56 s the second
# time with a 0.2 s threshold, 42 s with none).
# XLA:CPU's older elemental emitters compile a small train step in ~3 s where the newer fusion
# emitters take ~4 s (the two-stage model of helpers.SMALL_MODEL on 8 devices).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bts_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax

NUM_FAKE_DEVICES = 8
jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
jax.config.update("jax_platforms", "cpu")


# ----------------------------------------------------------------------------- a trained workdir

import fcntl  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402
from helpers import copy_workdir  # noqa: E402

TRAINED_NAME = "trained_test_config"


def _train_tiny(path: str) -> None:
    from bts_jax import sharding, train
    from bts_jax.configs import test as test_config

    config = test_config.get_config()
    config.num_epochs = 1
    # One device: sharding is tested elsewhere, and the 8-device programs compile slower.
    train.train_and_evaluate(config, path, mesh=sharding.make_mesh(jax.devices()[:1]))


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, worker_id) -> str:
    """A workdir of ``configs/test.py`` trained for one epoch: read it, never change it.

    Trained once per test session and shared by the pytest-xdist workers (the first one to get the
    lock in their common temporary folder trains it, the others wait and read it). Tests that
    change a workdir take `trained_workdir_copy`.
    """
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker has its own basetemp, inside the session's common folder.
    root = base.parent if worker_id != "master" else base
    path = root / TRAINED_NAME
    with open(root / f"{TRAINED_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "done").is_file():
            shutil.rmtree(path, ignore_errors=True)
            _train_tiny(str(path / "run"))
            (path / "done").write_text("")
    return str(path / "run")


@pytest.fixture
def trained_workdir_copy(trained_workdir, tmp_path) -> str:
    """A private copy of `trained_workdir`, to change."""
    return copy_workdir(trained_workdir, tmp_path)
