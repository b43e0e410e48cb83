"""The attention zoo at quickstart size: the U-Net with each registered attention; 3 seeds.

    python sweep.py --config configs/sweeps/attention_zoo.py \
        --workdir workdirs/sweeps/attention_zoo

Is ECA better than SE, CBAM, coordinate attention or scSE here? Every variant is the plain U-Net
(``double_conv``) with one attention in encoder, bottleneck and decoder (docs/design.md section 9);
the baseline is the U-Net without attention. The base is the quickstart's
(``configs/quickstart.py``, recipe v2): widths 16-128, 96x96, 8 epochs, Adam 1e-3 with warmup and
poly decay, GroupNorm, the head's prior, the bundled ``sample_128``; every cell is tested on the 310
held-out slices of the shared figshare folder. The same zoo on the paper's GSConv U-Net:
``--config.overrides.model.conv=gsconv``. 6 variants x 3 seeds at about 5 minutes a cell on 2 CPU
cores: about an hour and a half.
"""

import ml_collections

ATTENTIONS = ("none", "eca", "se", "cbam", "coord", "scse")
VARIANTS = {name: {"model": {"attention": name}} for name in ATTENTIONS}


def get_config() -> ml_collections.ConfigDict:
    """Returns the attention-zoo sweep."""
    sweep = ml_collections.ConfigDict()
    sweep.name = "attention_zoo"
    sweep.base_config = "configs/quickstart.py"
    sweep.overrides = {
        # The plain U-Net's convolutions; config.model.attention (the variants) wins over the
        # quickstart's eca_in group by group.
        "model": {"conv": "double_conv"},
        "num_predictions": 4,
    }
    # Every cell is scored on patients no cell trained or selected on: the held-out block of the
    # shared figshare folder (as configs/sweeps/quickstart_ablation.py; run from the repository
    # root, or set --config.test_folder).
    sweep.test_folder = "../shared/data/figshare_brain_tumor"
    sweep.test_heldout_fraction = 0.15
    sweep.variants = VARIANTS
    sweep.baseline = "none"
    sweep.paper_model = ""  # The paper's claims are about GSConv + ECA, not in this sweep.
    sweep.seeds = (0, 1, 2)
    sweep.folds = ()
    sweep.devices_per_run = 0  # 0 = all devices per cell; 1 = one cell per GPU, side by side
    return sweep
