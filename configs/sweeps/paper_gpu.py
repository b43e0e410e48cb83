"""The paper's protocol on a GPU: 512x512, full widths, 50 epochs, Adam 1e-4, 500 pairs; 4 x 3.

    python sweep.py --config configs/sweeps/paper_gpu.py --workdir workdirs/sweeps/paper_gpu \
        --config.overrides.data.data_dir=/path/to/figshare_brain_tumor

The paper split its 500 pairs 80/20 per slice (a leak of patients between training and
validation); here the 500 pairs are split by id blocks into train / validation / test (70 / 15 /
15 %), and test is what is reported. With several GPUs, ``--config.devices_per_run=1``
trains one cell per GPU.

Expected time per cell on one GPU, estimated from FLOPs, not measured (no GPU was available):
the paper model costs 203 GFLOPs per 512x512 image forward (`python benchmarks/model_stats.py`),
about 0.6 TFLOP per training image with the backward pass; 50 epochs of ~350 training images are
~11 PFLOP, 1-2 minutes of compute on an H100 at 10-30% of its bfloat16 peak. With compilation and
the per-epoch evaluation, expect well under 10 minutes per cell (the baseline U-Net has 1.9x the
FLOPs). Measure it with
`python benchmarks/train_throughput.py --config configs/default.py --config.dtype=bfloat16`.
"""

import ml_collections

from bts_jax.configs.sweeps import paper_ablation


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
