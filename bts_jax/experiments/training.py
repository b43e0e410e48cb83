"""How each variant of a sweep trained: spread over seeds, background-only starts, loss, seconds.

A recipe is judged by more than its mean score (docs/design.md section 7): by how far its seeds
spread, by whether its first epoch predicts only background (the head has not found the tumour
yet), by how far it brought the training loss down (an under-fitted run ends high), and by what
it cost. `training_summary` reads these from each finished cell (its scored evaluation, its
``metrics.jsonl`` and its ``cell.json``) and `training_table` writes them as the report's table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bts_jax.experiments.analysis import seed_values
from bts_jax.experiments.results import Run

# An epoch whose validation Dice is below this predicted (almost) nothing but background: with
# ~1.5% tumour pixels, one correct tumour pixel in a thousand already scores above it.
BACKGROUND_ONLY_DICE = 0.01


def _spread(values: Sequence[float]) -> dict[str, float]:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not finite.size:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def final_train_loss(run: Run) -> float:
    """The last logged training loss of a run (NaN when none was logged)."""
    losses = [row["train_loss"] for row in run.history if row.get("train_loss") is not None]
    return float(losses[-1]) if losses else math.nan


def first_epoch_val_dice(run: Run) -> float:
    """The validation Dice after the first epoch (NaN when the first epoch was not evaluated)."""
    for row in run.history:
        if row.get("epoch") == 1 and row.get("val_dice") is not None:
            return float(row["val_dice"])
    return math.nan


def training_summary(
    runs_by_variant: Mapping[str, Sequence[Run]], baseline: str
) -> dict[str, dict[str, Any]]:
    """Per variant: the scored Dice over seeds, background-only first epochs, loss and seconds.

    Args:
      runs_by_variant: variant -> its finished runs.
      baseline: the variant whose median seconds the others are divided by.

    Returns:
      variant -> ``{"n_runs", "dice": {"mean", "std", "min", "max"} over seeds (a seed's value
      is its mean over folds), "background_only_epoch_1": runs whose first-epoch validation
      Dice is below BACKGROUND_ONLY_DICE, "epoch_1_evaluated": runs with a first-epoch
      evaluation, "final_train_loss": {"mean", "std", "min", "max"} over runs, "wall_s": median
      over runs, "wall_ratio": that over the baseline's}``.
    """
    summary = {}
    for name, runs in runs_by_variant.items():
        first = [first_epoch_val_dice(r) for r in runs]
        summary[name] = {
            "n_runs": len(runs),
            "dice": _spread(list(seed_values(runs, "dice").values())),
            "background_only_epoch_1": sum(d < BACKGROUND_ONLY_DICE for d in first),
            "epoch_1_evaluated": sum(math.isfinite(d) for d in first),
            "final_train_loss": _spread([final_train_loss(r) for r in runs]),
            "wall_s": float(np.median([r.wall_s for r in runs])) if runs else math.nan,
        }
    reference = summary.get(baseline, {}).get("wall_s", math.nan)
    for row in summary.values():
        row["wall_ratio"] = row["wall_s"] / reference if reference else math.nan
    return summary


def _number(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def training_table(summary: Mapping[str, Mapping[str, Any]], split_title: str) -> list[str]:
    """The report's "How each variant trained" section (markdown lines).

    Args:
      summary: `training_summary`'s result.
      split_title: the scored split's name ("Validation" or "Test").

    Returns:
      The lines, ending with a blank one; variants without a finished run are left out (the
      report lists their cells as missing).
    """
    lines = [
        "## How each variant trained",
        "",
        f"{split_title} Dice over seeds (mean, standard deviation, lowest and highest seed); "
        "runs whose first epoch predicted only background (validation Dice below "
        f"{BACKGROUND_ONLY_DICE:g}); the last logged training loss (mean [lowest, highest] over "
        "runs); wall-clock seconds of a cell (median over runs, and its ratio to the baseline's).",
        "",
        "| variant | runs | Dice mean | Dice std | Dice min-max | background-only epoch 1 "
        "| final train loss | seconds | x baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        if not row["n_runs"]:
            continue
        dice, loss = row["dice"], row["final_train_loss"]
        cells = [
            name,
            str(row["n_runs"]),
            _number(dice["mean"], 3),
            _number(dice["std"], 3),
            f"{_number(dice['min'], 3)}-{_number(dice['max'], 3)}",
            f"{row['background_only_epoch_1']}/{row['epoch_1_evaluated']}",
            f"{_number(loss['mean'], 3)} [{_number(loss['min'], 3)}, {_number(loss['max'], 3)}]",
            _number(row["wall_s"], 0),
            _number(row["wall_ratio"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
