"""The statistics of a sweep report: per-variant summaries over seeds and paired comparisons.

Per variant, a metric's value for a seed is its test value (``eval_test.json``), averaged over the
seed's finished folds when the sweep has folds; mean, std and 95% t interval are over seeds. Every
variant is compared with the baseline, paired: over seeds (paired t-test of the seed values) on
`SEED_COMPARISON_METRICS`, and over test images (Wilcoxon signed-rank of each image's value
averaged over runs) on `IMAGE_COMPARISON_METRICS`. Only runs (seed, fold) finished for both
variants enter a comparison. Holm's correction runs over all comparisons of the report
(`bts_jax.experiments.stats`, docs/design.md section 7).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bts_jax.experiments import power, stats
from bts_jax.experiments.results import Run


@dataclasses.dataclass(frozen=True)
class Metric:
    """A reported metric.

    Attributes:
      key: its name in ``eval_test.json`` or ``per_image_test.csv``.
      label: its name in the report.
      higher_is_better: the direction in which a model is better.
      digits: decimals shown in the report.
    """

    key: str
    label: str
    higher_is_better: bool
    digits: int = 4


# The per-variant table (test split, one value per seed).
SUMMARY_METRICS = (
    Metric("dice", "Dice (tumour)", True),
    Metric("iou_tumour", "IoU (tumour)", True),
    Metric("miou", "mIoU", True),
    Metric("hd95_mm", "HD95 (mm)", False, 2),
    Metric("hd95_px", "HD95 (px)", False, 2),
    Metric("boundary_iou", "boundary IoU", True),
)


METRICS = {m.key: m for m in SUMMARY_METRICS}


# Paired over seeds (eval_test.json) and over test images (per_image_test.csv, HD95 in pixels).
SEED_COMPARISON_METRICS = ("miou", "dice", "hd95_mm", "boundary_iou")


IMAGE_COMPARISON_METRICS = ("dice", "hd95_px")
# The difference whose cost in seeds the report states, for the metrics on a 0-1 scale.
TARGET_DIFFERENCE = 0.01
UNIT_SCALE_METRICS = ("dice", "miou", "boundary_iou", "iou_tumour")


def _finite_mean(values: Iterable[float]) -> float:
    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def seed_values(runs: Sequence[Run], metric: str, keys: set | None = None) -> dict[int, float]:
    """One value per seed of a test metric: the mean over the seed's runs (its folds).

    Args:
      runs: runs of one variant.
      metric: a key of ``eval_test.json``.
      keys: if given, only runs whose (seed, fold) is in it.

    Returns:
      seed -> value (NaN where the metric is missing or null in every run of the seed).
    """
    by_seed: dict[int, list[float]] = {}
    for run in runs:
        if keys is None or run.key in keys:
            by_seed.setdefault(run.seed, []).append(run.test.get(metric, math.nan))
    return {seed: _finite_mean(values) for seed, values in sorted(by_seed.items())}


def image_values(runs: Sequence[Run], column: str, keys: set | None = None) -> dict[str, float]:
    """One value per test image of a per-image metric: the mean over the runs.

    Args:
      runs: runs of one variant.
      column: a numeric column of ``per_image_test.csv``.
      keys: if given, only runs whose (seed, fold) is in it.

    Returns:
      image id -> mean of its finite values over the runs that tested it (NaN if none).
    """
    by_id: dict[str, list[float]] = {}
    for run in runs:
        if keys is None or run.key in keys:
            for image_id, value in zip(run.per_image["id"], run.per_image[column], strict=True):
                by_id.setdefault(str(image_id), []).append(float(value))
    return {image_id: _finite_mean(values) for image_id, values in by_id.items()}


def _median_images_per_s(runs: Sequence[Run]) -> float:
    # The median over every epoch of every run: robust to a first epoch slowed by compilation.
    values = [
        float(r["train_images_per_s"])
        for run in runs
        for r in run.history
        if r.get("train_images_per_s") is not None
    ]
    return float(np.median(values)) if values else math.nan


def model_stats(run: Run) -> dict[str, float]:
    """Parameters and GFLOPs of a run's model at its image size (`model_summary`)."""
    import ml_collections

    from bts_jax.models import build_model, model_summary

    model = build_model(ml_collections.ConfigDict(run.config["model"]))
    summary = model_summary(model, int(run.config["data"]["image_size"]))
    return {"params": int(summary["params"]), "gflops": float(summary["gflops_per_image"])}


def summarize_variant(runs: Sequence[Run], confidence: float = 0.95) -> dict[str, Any]:
    """The per-variant table row: `SUMMARY_METRICS` over seeds, run counts and throughput.

    Args:
      runs: the finished runs of one variant.
      confidence: the intervals' confidence level.

    Returns:
      ``{"n_runs", "n_seeds", "metrics": {key: stats.Summary as dict}, "train_images_per_s"
      (median over epochs and runs), "wall_s" (median over runs)}``.
    """
    metrics = {}
    for metric in SUMMARY_METRICS:
        values = list(seed_values(runs, metric.key).values())
        metrics[metric.key] = dataclasses.asdict(stats.mean_ci(values, confidence))
    return {
        "n_runs": len(runs),
        "n_seeds": len({run.seed for run in runs}),
        "metrics": metrics,
        "train_images_per_s": _median_images_per_s(runs),
        "wall_s": float(np.median([r.wall_s for r in runs])) if runs else math.nan,
    }


def compare_with_baseline(
    runs_by_variant: Mapping[str, Sequence[Run]],
    baseline: str,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Paired comparisons of every other variant with the baseline, Holm-adjusted together.

    For each variant (in order) and each metric of `SEED_COMPARISON_METRICS`: a paired t-test over
    the seeds both variants finished (`seed_values`); for each of `IMAGE_COMPARISON_METRICS`: a
    Wilcoxon signed-rank test over the test images both tested (`image_values`). Only runs whose
    (seed, fold) finished in both variants are used. Differences are variant - baseline.

    Each comparison also states its power (`bts_jax.experiments.power`): the smallest difference
    it would detect with probability 0.8 at Holm's strictest level ``alpha / m`` (m tests; the
    k-th ranked is tested at ``alpha / (m - k + 1)``, so this bound holds for every rank), and,
    for the metrics on a 0-1 scale over seeds, the seeds a difference of `TARGET_DIFFERENCE`
    would need.

    Args:
      runs_by_variant: variant -> its finished runs (variants without runs are skipped).
      baseline: the reference variant.
      confidence: the intervals' confidence level.
      seed: seed of the Wilcoxon bootstrap intervals.
      alpha: the family's significance level (for the power figures).

    Returns:
      One dict per comparison: ``variant``, ``metric``, ``over`` ("seeds" or "images"),
      ``higher_is_better``, the `stats.PairedComparison` fields, ``pvalue_holm`` (adjusted
      over every comparison in the list that has a p-value), ``detectable`` (the difference
      detectable with power 0.8) and ``seeds_needed`` (for `TARGET_DIFFERENCE`, or None).
    """
    base_runs = runs_by_variant.get(baseline, ())
    rows, pairs = [], []
    for variant, runs in runs_by_variant.items():
        if variant == baseline or not runs or not base_runs:
            continue
        keys = {r.key for r in runs} & {r.key for r in base_runs}
        for metric in SEED_COMPARISON_METRICS:
            a = seed_values(base_runs, metric, keys)
            b = seed_values(runs, metric, keys)
            seeds = sorted(a)
            result = stats.paired_ttest(
                [a[s] for s in seeds], [b[s] for s in seeds], confidence=confidence
            )
            rows.append(_comparison_row(variant, metric, "seeds", result))
            pairs.append(([a[s] for s in seeds], [b[s] for s in seeds]))
        for column in IMAGE_COMPARISON_METRICS:
            a = image_values(base_runs, column, keys)
            b = image_values(runs, column, keys)
            ids = sorted(set(a) & set(b))
            result = stats.wilcoxon_paired(
                [a[i] for i in ids], [b[i] for i in ids], confidence=confidence, seed=seed
            )
            rows.append(_comparison_row(variant, column, "images", result))
            pairs.append(([a[i] for i in ids], [b[i] for i in ids]))
    adjusted = stats.holm([row["pvalue"] for row in rows])
    level = alpha / max(1, sum(math.isfinite(row["pvalue"]) for row in rows))
    for row, p, (a, b) in zip(rows, adjusted, pairs, strict=True):
        row["pvalue_holm"] = float(p)
        row["detectable"] = power.detectable_difference(a, b, level)
        unit_scale = row["over"] == "seeds" and row["metric"] in UNIT_SCALE_METRICS
        row["seeds_needed"] = (
            power.pairs_needed(a, b, TARGET_DIFFERENCE, level) if unit_scale else None
        )
        row["power_alpha"] = level
    return rows


def _comparison_row(variant: str, metric: str, over: str, result) -> dict[str, Any]:
    return {
        "variant": variant,
        "metric": metric,
        "over": over,
        "higher_is_better": METRICS[metric].higher_is_better,
        **dataclasses.asdict(result),
    }


def mean_curve(
    runs: Sequence[Run], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A per-epoch metric of ``metrics.jsonl`` over runs: mean, min and max per epoch.

    Args:
      runs: runs of one variant.
      key: e.g. "val_loss" or "val_miou" (epochs without it, or with null, are skipped).

    Returns:
      (epochs, mean, low, high), each (num_epochs,), over the epochs at least one run has.
    """
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.history:
            value = record.get(key)
            if value is not None and math.isfinite(float(value)):
                by_epoch.setdefault(int(record["epoch"]), []).append(float(value))
    epochs = np.array(sorted(by_epoch), dtype=np.int64)
    values = [np.asarray(by_epoch[e]) for e in epochs]
    return (
        epochs,
        np.array([v.mean() for v in values]),
        np.array([v.min() for v in values]),
        np.array([v.max() for v in values]),
    )


def type_values(runs: Sequence[Run], keys: set | None = None) -> dict[str, dict[int, float]]:
    """Per tumour type, one value per seed: the Dice of the type's test pixels, pooled.

    A type's Dice over a run's images is ``sum(Dice_i * (P_i + T_i)) / sum(P_i + T_i)`` over its
    images (P, T: predicted and true tumour pixels), which is ``2 TP / (P + T)`` pooled over them:
    the split-level Dice restricted to the type. A seed's value is the mean over its folds.

    Args:
      runs: runs of one variant.
      keys: if given, only runs whose (seed, fold) is in it.

    Returns:
      tumour type -> {seed: value}, types in order of first appearance.
    """
    by_type: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        if keys is not None and run.key not in keys:
            continue
        table = run.per_image
        pixels = table["truth_pixels"] + table["pred_pixels"]
        for kind in dict.fromkeys(map(str, table["tumour_type"])):
            chosen = (table["tumour_type"] == kind) & (pixels > 0)
            total = pixels[chosen].sum()
            value = float((table["dice"][chosen] * pixels[chosen]).sum() / total) if total else 1.0
            by_type.setdefault(kind, {}).setdefault(run.seed, []).append(value)
    return {
        kind: {seed: _finite_mean(values) for seed, values in sorted(seeds.items())}
        for kind, seeds in by_type.items()
    }


def summarize_types(runs: Sequence[Run], confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per tumour type, the `type_values` over seeds: mean, std and interval (`stats.mean_ci`)."""
    return {
        kind: dataclasses.asdict(stats.mean_ci(list(values.values()), confidence))
        for kind, values in type_values(runs).items()
    }
