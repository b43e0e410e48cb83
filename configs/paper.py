"""The paper's experiment (docs/design.md section 5) with the improved U-Net (GSConv + ECA).

500 image/mask pairs, 80/20 train/validation, 50 epochs, 512x512, Adam at lr 1e-4, grayscale +
histogram equalisation. Needs the full dataset folder (Kaggle layout) or the TFDS build of it:

    python train.py --config configs/paper.py --workdir workdirs/paper \
        --config.data.data_dir=/path/to/brain_tumor_folder

The split is by id blocks (leak-free); ``--config.data.split_method=random`` reproduces the
paper's per-slice split, which leaks patients between training and validation.
"""

import ml_collections

from bts_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper protocol for the improved U-Net."""
    config = default.get_config()
    config.data.source = "folder"
    config.data.data_dir = ""  # Required: set it on the command line.
    config.data.subset_size = 500
    config.data.val_fraction = 0.2
    config.data.image_size = 512
    config.data.augment.flip = False  # The paper mentions no augmentation.
    config.num_epochs = 50
    config.batch_size = 8
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "constant"
    return config
