"""Test set-up: 8 fake CPU devices, so every test exercises the sharded code path.

This must run before JAX initialises its backend, hence at conftest import time.
"""

import os

# Keep TensorFlow quiet and off any accelerator; it only feeds the input pipeline.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

NUM_FAKE_DEVICES = 8
jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
jax.config.update("jax_platforms", "cpu")
