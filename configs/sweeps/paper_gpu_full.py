"""The paper's protocol on the whole folder: 512x512, full widths, 50 epochs, Adam 1e-4.

    python sweep.py --config configs/sweeps/paper_gpu_full.py \
        --workdir workdirs/sweeps/paper_gpu_full \
        --config.overrides.data.data_dir=/path/to/figshare_brain_tumor

Like configs/sweeps/paper_gpu.py but on every pair of the folder (2145 in the shared copy, 3064 in
the full Kaggle set), split by id blocks into train / validation / test (70 / 15 / 15 %).
"""

import ml_collections

from bts_jax.configs.sweeps import paper_gpu


def get_config() -> ml_collections.ConfigDict:
    """Returns the whole-folder ablation sweep at the paper's size."""
    sweep = paper_gpu.get_config()
    sweep.name = "paper_ablation_gpu_full"
    sweep.overrides.data.subset_size = 0
    return sweep
