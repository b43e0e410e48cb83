"""A tiny CPU config for tests: the paper model at 4-32 channels on 32x32 bundled images.

python train.py --config configs/test.py --workdir /tmp/bts_test
"""

import ml_collections

from bts_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns a config that trains a few steps in seconds on one CPU core."""
    config = default.get_config()
    config.model.features = (4, 8, 16, 32)
    config.data.image_size = 32
    config.data.augmentations = "flip"
    # No test split: the bundled sample's 60 slices stay 48 train / 12 validation, as the tests
    # expect. Tests of the test split set it.
    config.data.test_fraction = 0.0
    # A multiple of the 8 fake CPU devices the tests run on.
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 1
    config.log_every_steps = 1
    # XLA's grouped convolution for GSConv's depthwise part, rather than CPU's default "shifted"
    # sum of nine slices: the same function, traced as one operation instead of dozens, which
    # takes a fifth off each tiny run (most of which is tracing). The shifted formulation keeps
    # its own tests (tests/test_models.py, and the K-seed step in tests/test_seeds.py).
    config.model.depthwise_impl = "grouped"
    return config
