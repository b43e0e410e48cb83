"""Recipe v2's study: each recipe part changed alone from the quickstart's, scored on validation.

    python sweep.py --config configs/sweeps/recipe_study.py --workdir workdirs/sweeps/recipe_study

The paper model at the quickstart's size (``configs/quickstart_v1.py``: widths 16-128, 96x96, batch
4, 8 epochs, Adam at 1e-3 with a 0.1-epoch warmup and cosine decay to 0, BCE + pooled soft
Dice, BatchNorm, output bias 0), seeds 0-2. Each variant changes one recipe setting, by name
from the registries (docs/extending.md, "Your own recipe parts"; docs/design.md sections 10-11):
the head's prior, the norm, the schedule's end, the peak and warmup, the optimiser, gradient
clipping, weight averaging, the loss, and the resolution against the epochs at the same compute
(pixels x epochs within 5% of 96 px x 8).

**Chosen on validation only**: ``score_split = "validation"`` makes the report score each cell's own
validation block (the last 15% of each tumour type's bundled ids, 135 slices) and read no test
image; the 310 held-out slices of unseen patients (``benchmarks/heldout_quickstart.py``) are scored
once, for the chosen recipe and for today's, after the study. Restartable in pieces (``--cell``;
several processes may share the folder, a cell's lock keeps it single-writer), then ``report.py
DIR``. On the 2-core machine one process using both cores steps at ~20 images/s (201 ms per batch of
4, docs/performance.md), two processes pinned one per core (``taskset -c 0`` and ``-c 1``) trained
~7.7 each: the study runs one process, from one fixed commit, so that every kept cell ran the same
code. Its first 12 cells ran from a moving checkout (four commits), two of them pinned to one core;
they run again from that commit. The combinations were added later; a cell that ran from a
later commit says so in its ``environment.json``, and ``benchmarks/reproduce_kept_cell.py``
retrains a kept cell to check that a commit trains it bit for bit as the one it ran from.
XLA:CPU's bits depend on the thread count: a seed pinned to one core ends training elsewhere
than on two (README, Determinism). Cells that ran while other jobs
shared the machine have inflated seconds: compare costs with ``benchmarks/recipe_costs.py``.
"""

import ml_collections

VARIANTS = {
    # Today's recipe (the first quickstart's, configs/quickstart_v1.py), the baseline every
    # variant is compared with.
    "today": {},
    # The head starts at the tumour's pixel fraction instead of 0.5 (no background-only epochs).
    "prior": {"model": {"output_bias_prior": "auto"}},
    # Norms without batch statistics (batch 4 makes BatchNorm's running statistics noisy).
    "group_norm": {"model": {"norm": "group(8)"}},
    "instance_norm": {"model": {"norm": "instance"}},
    "batch_momentum_099": {"model": {"norm": "batch(momentum=0.99)"}},
    # Schedules that do not spend their last epochs at a rate near 0.
    "cosine_floor": {"optimizer": {"schedule": "cosine(final=0.1)"}},
    "poly": {"optimizer": {"schedule": "poly"}},
    "peak_3e-3_warmup_1": {"optimizer": {"learning_rate": 3e-3, "warmup_epochs": 1.0}},
    "adamw": {"optimizer": {"name": "adamw", "weight_decay": 1e-2}},
    "clip_1": {"optimizer": {"grad_clip_norm": 1.0}},
    # About the last 200 of the 1,536 steps.
    "ema_0995": {"ema_decay": 0.995},
    "per_image_dice": {"loss": {"name": "bce:1,dice(per_image=true):1"}},
    # Resolution against epochs at the same compute: 80^2 x 11 and 112^2 x 6 against 96^2 x 8.
    "80px_11_epochs": {"data": {"image_size": 80}, "num_epochs": 11},
    "112px_6_epochs": {"data": {"image_size": 112}, "num_epochs": 6},
    # The parts combined, added after the single-part cells had run (`--cell K` counts cells in
    # the order of the variants' names, so adding these moved the indices of "prior" onwards;
    # `--list` prints them): the two parts that changed training and narrowed the seeds' spread
    # (the prior and GroupNorm), and poly, whose weak seed ended training lower than today's
    # (train loss 0.553 against 0.653, validation Dice 0.528 against 0.473).
    "prior_group_norm": {"model": {"output_bias_prior": "auto", "norm": "group(8)"}},
    "prior_poly": {"model": {"output_bias_prior": "auto"}, "optimizer": {"schedule": "poly"}},
    "prior_group_norm_poly": {
        "model": {"output_bias_prior": "auto", "norm": "group(8)"},
        "optimizer": {"schedule": "poly"},
    },
}


def get_config() -> ml_collections.ConfigDict:
    """Returns the recipe study sweep."""
    sweep = ml_collections.ConfigDict()
    sweep.name = "recipe_study"
    sweep.base_config = "configs/quickstart_v1.py"
    # XLA's convolutions, as the first cells ran (before config.model.conv_impl existed).
    sweep.overrides = {"num_predictions": 0, "model": {"conv_impl": "xla"}}
    sweep.variants = VARIANTS
    sweep.baseline = "today"
    sweep.paper_model = ""
    sweep.seeds = (0, 1, 2)
    sweep.folds = ()
    sweep.devices_per_run = 0
    sweep.score_split = "validation"
    return sweep
