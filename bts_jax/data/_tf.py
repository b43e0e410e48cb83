"""TensorFlow, imported once with accelerators hidden.

TensorFlow only feeds the host input pipeline. If it saw the GPUs it would reserve most of their
memory at start-up and JAX would run out of it, so every module of ``bts_jax.data`` imports
TensorFlow from here.
"""

import contextlib

import tensorflow as tf

# RuntimeError: TF was initialised elsewhere and its devices can no longer be changed; whoever
# initialised it chose the visible devices then.
with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
