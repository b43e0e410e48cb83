"""The paper's ablation where models find tumours: quickstart size, 5 seeds, unseen patients.

    python sweep.py --config configs/sweeps/quickstart_ablation.py \
        --workdir workdirs/sweeps/quickstart_ablation

The paper's four variants (U-Net, +ECA, +GSConv, both; docs/design.md section 7) at the quickstart's
size and first recipe (``configs/quickstart_v1.py``: widths 16-128, 96x96, Adam with warmup and
cosine decay, trained on the bundled ``sample_128`` with its last 15% of ids per tumour type for
validation), 5 seeds each; and, from the block registry (section 9), the U-Net with SE or CBAM
attention in place of ECA, 3 seeds each. Every cell is tested on the same 310 slices of patients
that no cell trains or selects on: the last 15% of each tumour type's ids of the shared figshare
folder minus the bundled ids (``bts_jax.data.splits.heldout_block``), each at its own size. Run it
from the repository root (the folder is ``../shared/...`` from there), or set
``--config.test_folder``. On a cluster: ``sweep.py ... --list``, then one job per cell with
``--cell K``, then ``report.py DIR`` (docs/experiments.md).
"""

import ml_collections

# The paper's four variants: only the two switches differ (as configs/sweeps/paper_ablation.py).
EVERYWHERE = "encoder,bottleneck,decoder"
VARIANTS = {
    "unet": {"model": {"gsconv_in": "", "eca_in": ""}},
    "eca": {"model": {"gsconv_in": "", "eca_in": EVERYWHERE}},
    "gsconv": {"model": {"gsconv_in": EVERYWHERE, "eca_in": ""}},
    "paper": {"model": {"gsconv_in": EVERYWHERE, "eca_in": EVERYWHERE}},
    # ECA's rivals on the plain U-Net, by name from the block registry.
    "se": {"model": {"gsconv_in": "", "eca_in": "", "attention": "se"}},
    "cbam": {"model": {"gsconv_in": "", "eca_in": "", "attention": "cbam"}},
}


def get_config() -> ml_collections.ConfigDict:
    """Returns the quickstart-size ablation sweep."""
    sweep = ml_collections.ConfigDict()
    sweep.name = "quickstart_ablation"
    sweep.base_config = "configs/quickstart_v1.py"
    # XLA's convolutions, as its cells ran (before config.model.conv_impl existed).
    sweep.overrides = {"num_predictions": 4, "model": {"conv_impl": "xla"}}
    sweep.variants = VARIANTS
    sweep.baseline = "unet"
    sweep.paper_model = "paper"
    sweep.seeds = (0, 1, 2, 3, 4)
    # Within the 2-hour budget on 2 CPU cores, ECA's rivals get 3 seeds.
    sweep.variant_seeds = {"se": (0, 1, 2), "cbam": (0, 1, 2)}
    sweep.folds = ()
    sweep.devices_per_run = 0
    sweep.test_folder = "../shared/data/figshare_brain_tumor"
    sweep.test_heldout_fraction = 0.15
    return sweep
