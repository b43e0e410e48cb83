"""TensorFlow, imported once with accelerators hidden.

TensorFlow only feeds the host input pipeline. If it saw the GPUs it would reserve most of their memory at
start-up and JAX would run out of it, so every module of ``bts_jax.data`` imports TensorFlow from here.
"""

import tensorflow as tf


def _hide_accelerators() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TF was already initialised by someone else; devices can no longer be changed. Nothing to do then:
        # whoever initialised it chose the visible devices.
        pass


_hide_accelerators()

__all__ = ["tf"]
