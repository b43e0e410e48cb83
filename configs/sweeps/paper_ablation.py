"""The paper's ablation at CPU size: U-Net, +ECA, +GSConv, both; 3 seeds; held-out test blocks.

    python sweep.py --config configs/sweeps/paper_ablation.py \
        --workdir workdirs/sweeps/paper_ablation

Trains on the shared figshare folder (``../shared/data/figshare_brain_tumor`` from the repository
root; set ``--config.overrides.data.data_dir`` elsewhere) at 64x64 with an eighth of the paper's
widths, so the 12 cells fit in about 90 minutes on 2 CPU cores. Splits are by id blocks per tumour
type (train / validation / test = 70 / 15 / 15 %); the test block is the same for every cell, so
the comparisons are paired image by image. See configs/sweeps/paper_gpu.py for the paper's size.
"""

import ml_collections

# The paper's four variants (docs/design.md section 7): only the two switches differ.
EVERYWHERE = "encoder,bottleneck,decoder"
VARIANTS = {
    "unet": {"model": {"gsconv_in": "", "eca_in": ""}},
    "eca": {"model": {"gsconv_in": "", "eca_in": EVERYWHERE}},
    "gsconv": {"model": {"gsconv_in": EVERYWHERE, "eca_in": ""}},
    "paper": {"model": {"gsconv_in": EVERYWHERE, "eca_in": EVERYWHERE}},
}


def get_config() -> ml_collections.ConfigDict:
    """Returns the CPU-sized ablation sweep."""
    sweep = ml_collections.ConfigDict()
    sweep.name = "paper_ablation_cpu"
    sweep.base_config = "configs/default.py"
    sweep.overrides = {
        "model": {"features": (8, 16, 32, 64)},
        "data": {
            "source": "folder",
            "data_dir": "../shared/data/figshare_brain_tumor",
            "image_size": 64,
            "val_fraction": 0.15,
            "test_fraction": 0.15,
            "split_gap": 2,
        },
        "batch_size": 16,
        "eval_batch_size": 32,
        "num_epochs": 12,
        "optimizer": {
            "learning_rate": 3e-3,
            "schedule": "cosine",
            "warmup_epochs": 0.5,
        },
        "num_predictions": 4,
        "log_every_steps": 20,
    }
    sweep.variants = VARIANTS
    sweep.baseline = "unet"
    sweep.paper_model = "paper"
    sweep.seeds = (0, 1, 2)
    sweep.folds = ()
    sweep.devices_per_run = 0  # 0 = all devices per cell; 1 = one cell per GPU, side by side
    return sweep
