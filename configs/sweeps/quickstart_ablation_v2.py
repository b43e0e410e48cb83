"""The quickstart-size ablation again, with recipe v2: six variants, 5 seeds each, unseen patients.

    python sweep.py --config configs/sweeps/quickstart_ablation_v2.py \
        --workdir workdirs/sweeps/quickstart_ablation_v2

The variants of the first run (``configs/sweeps/quickstart_ablation.py``: U-Net, +ECA, +GSConv, the
paper's model, the U-Net with SE or with CBAM), trained with recipe v2 (``configs/quickstart.py``,
chosen by the recipe study on validation only: docs/results.md, "Recipe v2"), every variant at seeds
0-4. Scored on the same 310 held-out slices of unseen patients as the first run (the shared folder's
last id blocks, at their own size), so the two runs' verdicts and minimal detectable effects sit
side by side (the first run kept in ``docs/results/quickstart_ablation/``). The ``unet`` and
``paper`` cells are recipe v2's held-out figures (README, "Quickstart"). Run it from the repository
root, or set ``--config.test_folder``; in pieces with ``--cell K``.
"""

import ml_collections

from bts_jax.configs.sweeps import quickstart_ablation


def get_config() -> ml_collections.ConfigDict:
    """Returns the quickstart-size ablation with recipe v2."""
    sweep = quickstart_ablation.get_config()
    sweep.name = "quickstart_ablation_v2"
    sweep.base_config = "configs/quickstart.py"
    sweep.overrides = {"num_predictions": 4}
    sweep.variant_seeds = {}
    return sweep
