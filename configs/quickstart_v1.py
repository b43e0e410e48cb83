"""The quickstart's first recipe (v1), as it was until recipe v2: kept for the runs made with it.

    python train.py --config configs/quickstart_v1.py --workdir workdirs/quickstart_v1

The sweeps trained with this recipe resolve their cells' configs from it (``sweep.py`` refuses to
go on when a cell's config changed under it): the kept quickstart ablation
(``configs/sweeps/quickstart_ablation.py``, ``docs/results/quickstart_ablation/``) and the recipe
study's ``today`` (``configs/sweeps/recipe_study.py``). ``configs/quickstart.py`` is recipe v2,
chosen by that study (docs/results.md, "Recipe v2").

The paper's improved U-Net at a quarter of ``configs/default.py``'s widths, on the 906 pairs of
``bts_jax/data/sample_128`` at 96x96: batch 4, 8 epochs, Adam at 1e-3 with a 0.1-epoch warmup and
cosine decay to 0, BCE + soft Dice, BatchNorm, the output bias at 0.

Its learning rate, epochs and image size were chosen by tumour Dice on the 310 held-out slices
(``benchmarks/heldout_quickstart.py``), with paper seed 0 (later known to be the best of five),
each one full run at 96 px, batch 4: 3 epochs at 3e-3: 0.472; 6 epochs at 3e-3: 0.518; 8 epochs at
3e-3: 0.538; 8 epochs at 2e-3: 0.567; 6 epochs at 1e-3: 0.585; 8 epochs at 1e-3: 0.598 (this
config). Lost: 64 px (0.261, 8 epochs), 128 px (0.445, 4 epochs), widths 8-64 (0.483, 10 epochs),
batch 8 at 5e-3 (0.398, 4 epochs), a per-image Dice loss (0.440 against 0.472, 3 epochs). Over
seeds 0-4 the paper model scores 0.589, 0.479, 0.412, 0.530 and 0.408 there (0.484 +- 0.078;
``docs/results/quickstart_ablation``). Recipe v2 is chosen on validation only.
"""

import ml_collections

from bts_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the first quickstart recipe."""
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
    config.data.augmentations = "flip"
    # 770 training images: batch 4 gives 192 steps per epoch, 1536 in all. On CPU the depthwise
    # convolutions run as exact reformulations of the grouped one (config.model.depthwise_impl=
    # "auto"; docs/performance.md), which made room for 8 epochs instead of 3.
    config.batch_size = 4
    config.eval_batch_size = 16
    config.num_epochs = 8
    # Fewer steps than the paper's run: 10x its rate, a short warmup and cosine decay (3e-3 and
    # 2e-3 did worse on unseen patients: see above).
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 0.1
    config.log_every_steps = 12
    return config
