"""Quickstart: the paper's improved U-Net, slimmed to train on the bundled sample on a CPU.

The README's main command runs it (a few minutes on 2 CPU cores):

    python train.py --config configs/quickstart.py --workdir workdirs/quickstart

Same blocks and switches as ``configs/default.py`` (GSConv + ECA in encoder, bottleneck and
decoder; equalised grayscale input; Adam), at a quarter of the widths and 128x128 pixels.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the quickstart config."""
    config = default.get_config()
    config.model.features = (16, 32, 64, 128)
    config.data.source = "sample"
    config.data.image_size = 128
    config.data.augment.flip = True
    config.data.augment.rot90 = False
    # 48 training images: batch 4 gives 12 steps per epoch, 360 in all.
    config.batch_size = 4
    config.eval_batch_size = 4
    config.num_epochs = 30
    # Far fewer steps than the paper's run: a higher rate, with warmup and cosine decay.
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 1.0
    config.log_every_steps = 6
    return config
