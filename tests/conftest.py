"""Test set-up: 8 fake CPU devices, so every test exercises the sharded code path.

This must run before JAX initialises its backend, hence at conftest import time.
"""

import os
import tempfile

# Keep TensorFlow quiet and off any accelerator; it only feeds the input pipeline.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test programs are tiny, so XLA's CPU compile time dominates: skip LLVM's optimisations (halves
# compile time, numerics unchanged) and share compiled programs between tests, test processes and
# subprocesses through the persistent cache. Environment variables, so subprocesses inherit them.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bts_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax

NUM_FAKE_DEVICES = 8
jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
jax.config.update("jax_platforms", "cpu")
