"""The paper's protocol on a GPU: 512x512, full widths, 50 epochs, Adam 1e-4, 500 pairs; 4 x 3.

    python sweep.py --config configs/sweeps/paper_gpu.py --workdir workdirs/sweeps/paper_gpu \
        --config.overrides.data.data_dir=/path/to/figshare_brain_tumor

The paper split its 500 pairs 80/20 per slice (a leak of patients between training and
validation); here the 500 pairs are split by id blocks into train / validation / test (70 / 15 /
15 %), and test is what is reported. With several GPUs, ``--config.devices_per_run=1``
trains one cell per GPU.
"""

import ml_collections

from configs.sweeps import paper_ablation


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper-sized ablation sweep (500 pairs)."""
    sweep = paper_ablation.get_config()
    sweep.name = "paper_ablation_gpu_500"
    sweep.overrides = {
        "data": {
            "source": "folder",
            "data_dir": "../shared/data/figshare_brain_tumor",
            "image_size": 512,
            "subset_size": 500,
            "val_fraction": 0.15,
            "test_fraction": 0.15,
            "split_gap": 2,
        },
        "batch_size": 8,
        "eval_batch_size": 8,
        "num_epochs": 50,
        "dtype": "bfloat16",
        "optimizer": {"learning_rate": 1e-4, "schedule": "constant"},
    }
    return sweep
