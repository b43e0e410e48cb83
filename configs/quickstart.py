"""Quickstart: the paper's improved U-Net, slimmed to train on the bundled sample on a CPU.

The README's main command runs it (about 4.5 minutes on 2 CPU cores):

    python train.py --config configs/quickstart.py --workdir workdirs/quickstart
    python benchmarks/heldout_quickstart.py --workdir workdirs/quickstart  # unseen patients

Same blocks and switches as ``configs/default.py`` (GSConv + ECA in encoder, bottleneck and
decoder; equalised grayscale input; Adam; BCE + soft Dice), at a quarter of the widths, on the
906 pairs of ``bts_jax/data/sample_128`` (stored at 128x128), trained at 96x96: on 2 cores the
held-out Dice per minute was best with more optimiser steps at a lower resolution (see
``benchmarks/heldout_quickstart.py``).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the quickstart config."""
    config = default.get_config()
    config.model.features = (16, 32, 64, 128)
    # Many patients seen once or twice generalise far better than 48 slices seen 30 times.
    config.data.source = "sample_128"
    # 96 px costs ~0.56x the compute of 128 px; the resolution alone caps Dice at ~0.96.
    config.data.image_size = 96
    config.data.val_fraction = 0.15  # the last 15% of each tumour type's ids: ~136 slices
    # No test block inside the bundle: the quickstart's held-out patients are the shared folder's
    # last id blocks, which no bundle holds (benchmarks/heldout_quickstart.py scores them).
    config.data.test_fraction = 0.0
    config.data.augment.flip = True
    config.data.augment.rot90 = False
    # 770 training images: batch 4 gives 192 steps per epoch, 576 in all.
    config.batch_size = 4
    config.eval_batch_size = 16
    config.num_epochs = 3
    # Far fewer steps than the paper's run: a higher rate, a short warmup and cosine decay.
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 0.1
    config.log_every_steps = 12
    return config
