"""The report of an ablation sweep (docs/design.md section 7): tables, paired tests, verdicts.

`write_report` reads a sweep folder and writes ``report.md``, ``summary.csv``, ``summary.json`` and
PNG figures into it. The folder's layout (written by the sweep runner):

- ``sweep.json``: ``{"name", "base_config", "baseline", "paper_model" (optional), "variants":
  {name: {config field path: value}}, "seeds": [ints], "folds": [ints] or null}``.
- one cell per (variant, seed[, fold]), see `cell_dir`, holding ``config.json``,
  ``eval_test.json``, ``per_image_test.csv``, ``metrics.jsonl`` and ``cell.json``
  (``{"status": "done", "wall_s"}``). Cells that are not done are listed as missing and left out.

Statistics (`bts_jax.stats`):

- Per variant, a metric's value for a seed is its test value (``eval_test.json``), averaged over
  the seed's finished folds when the sweep has folds; mean, std and 95% t interval are over seeds.
- Every variant is compared with the baseline, paired: over seeds (paired t-test of the seed
  values) on `SEED_COMPARISON_METRICS`, and over test images (Wilcoxon signed-rank of each image's
  value averaged over runs) on `IMAGE_COMPARISON_METRICS`. Only runs (seed, fold) finished for both
  variants enter a comparison. Holm's correction runs over all comparisons of the report.
- The paper's claims get a verdict from the seed-level tests (seeds are the independent
  replicates; the image-level tests show where the difference lies on these fixed images).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bts_jax import stats
from bts_jax.evaluation import PER_IMAGE_COLUMNS

SWEEP_FILE = "sweep.json"
CELL_FILE = "cell.json"
CONFIG_FILE = "config.json"
EVAL_FILE = "eval_test.json"
PER_IMAGE_FILE = "per_image_test.csv"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
TEST_DICE_FIGURE = "test_dice.png"
VAL_MIOU_FIGURE = "val_miou.png"


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
_METRICS = {m.key: m for m in SUMMARY_METRICS}
# Paired over seeds (eval_test.json) and over test images (per_image_test.csv, HD95 in pixels).
SEED_COMPARISON_METRICS = ("miou", "dice", "hd95_mm", "boundary_iou")
IMAGE_COMPARISON_METRICS = ("dice", "hd95_px")
# Claim (c): the loss "bottoms out" at the first epoch whose mean validation loss is within this
# fraction of the curve's minimum; "around epoch 8" means an epoch in this range.
LOSS_BOTTOM_TOLERANCE = 0.05
LOSS_BOTTOM_EPOCHS = (5, 11)
# Claim (d): mIoU "settles near 0.8": the mean test mIoU is within this distance of it.
PAPER_MIOU = 0.8
PAPER_MIOU_TOLERANCE = 0.05

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_SIGNIFICANT = "not significant"
NO_DATA = "no data"

# A caller-supplied figure of predictions (the paper's figure 8): called with the loaded sweep and
# the output folder, returns the written PNG's path (or None for no figure).
PredictionFigure = Callable[["Sweep", str], "str | None"]


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The definition of a sweep (``sweep.json``).

    Attributes:
      directory: the sweep folder.
      name: the sweep's name.
      base_config: the config file every variant starts from.
      baseline: the variant the others are compared with.
      paper_model: the variant that is the paper's improved model, or None.
      variants: variant name -> {config field path: value}, in file order.
      seeds: the seeds every variant runs.
      folds: the folds every (variant, seed) runs, or None without folds.
    """

    directory: str
    name: str
    base_config: str
    baseline: str
    paper_model: str | None
    variants: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    folds: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished cell: one (variant, seed, fold) training run and its test results.

    Attributes:
      variant: the variant's name.
      seed: the run's seed.
      fold: the run's fold, or None without folds.
      path: the cell folder.
      config: the run's full config (``config.json``).
      test: test metrics (``eval_test.json``; null read as NaN).
      per_image: column -> (num_images,) array of ``per_image_test.csv`` (``"id"`` and
        ``"tumour_type"`` as strings, the others float, empty read as NaN).
      history: the per-epoch records of ``metrics.jsonl``.
      wall_s: the run's wall-clock seconds (``cell.json``).
    """

    variant: str
    seed: int
    fold: int | None
    path: str
    config: dict[str, Any]
    test: dict[str, float]
    per_image: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    wall_s: float

    @property
    def key(self) -> tuple[int, int | None]:
        """(seed, fold): what pairs runs of two variants."""
        return (self.seed, self.fold)


@dataclasses.dataclass(frozen=True)
class MissingCell:
    """A cell that is not (or not completely) finished.

    Attributes:
      variant: the variant's name.
      seed: the cell's seed.
      fold: the cell's fold, or None.
      path: the cell folder.
      reason: why it is not used, e.g. "no cell.json" or "status 'running'".
    """

    variant: str
    seed: int
    fold: int | None
    path: str
    reason: str


def cell_dir(directory: str, variant: str, seed: int, fold: int | None = None) -> str:
    """The folder of one cell: ``DIR/<variant>/seed_<n>`` or ``DIR/<variant>/fold_<k>/seed_<n>``.

    Args:
      directory: the sweep folder.
      variant: the variant's name.
      seed: the seed.
      fold: the fold, or None for a sweep without folds.

    Returns:
      The cell's path.
    """
    parts = [directory, variant] + ([] if fold is None else [f"fold_{fold}"])
    return os.path.join(*parts, f"seed_{seed}")


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{where} must be a non-empty list of integers, got {value!r}.")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} has repeated entries: {value!r}.")
    return tuple(value)


def load_sweep(directory: str | os.PathLike) -> Sweep:
    """Reads and checks ``<directory>/sweep.json``.

    Args:
      directory: the sweep folder.

    Returns:
      The `Sweep`.

    Raises:
      FileNotFoundError: there is no ``sweep.json``.
      ValueError: a field is missing or invalid (the message names the file and the field).
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, SWEEP_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a sweep folder: it has no {SWEEP_FILE}.")
    with open(path) as f:
        content = json.load(f)
    for field in ("name", "base_config", "baseline", "variants", "seeds"):
        if field not in content:
            raise ValueError(f"{path} has no {field!r} field.")
    variants = content["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{path}: 'variants' must be a non-empty mapping of name -> overrides.")
    for field in ("baseline", "paper_model"):
        name = content.get(field)
        if name is not None and name not in variants:
            raise ValueError(
                f"{path}: {field}={name!r} is not one of the variants {sorted(variants)}."
            )
    folds = content.get("folds")
    return Sweep(
        directory=directory,
        name=str(content["name"]),
        base_config=str(content["base_config"]),
        baseline=content["baseline"],
        paper_model=content.get("paper_model"),
        variants={name: dict(overrides) for name, overrides in variants.items()},
        seeds=_int_list(content["seeds"], f"{path}: 'seeds'"),
        folds=None if folds is None else _int_list(folds, f"{path}: 'folds'"),
    )


def _float(value: Any) -> float:
    return math.nan if value is None or value == "" else float(value)


def read_per_image(path: str) -> dict[str, np.ndarray]:
    """Reads a ``per_image_test.csv`` into columns.

    Args:
      path: the CSV file; header `bts_jax.evaluation.PER_IMAGE_COLUMNS` (extra columns are kept).

    Returns:
      column -> (num_images,) array: ``id`` and ``tumour_type`` as str, the others float64 with
      empty, "nan" or missing values as NaN.

    Raises:
      ValueError: a required column is missing (the message names the file).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PER_IMAGE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}.")
        rows = list(reader)
    columns = {}
    for name in reader.fieldnames:
        values = [row[name] for row in rows]
        if name in ("id", "tumour_type"):
            columns[name] = np.array(values, dtype=str)
        else:
            columns[name] = np.array([_float(v) for v in values], dtype=np.float64)
    return columns


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_cell(path: str) -> tuple[dict[str, Any] | None, str]:
    """The cell's files, or None and the reason it cannot be used."""
    status_path = os.path.join(path, CELL_FILE)
    if not os.path.isdir(path):
        return None, "no cell folder"
    if not os.path.isfile(status_path):
        return None, f"no {CELL_FILE}"
    with open(status_path) as f:
        status = json.load(f)
    if status.get("status") != "done":
        return None, f"status {status.get('status')!r}"
    for name in (CONFIG_FILE, EVAL_FILE, PER_IMAGE_FILE, METRICS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            return None, f"done but {name} is missing"
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = json.load(f)
    with open(os.path.join(path, EVAL_FILE)) as f:
        test = {k: _float(v) for k, v in json.load(f).items() if not isinstance(v, str)}
    files = {
        "config": config,
        "test": test,
        "per_image": read_per_image(os.path.join(path, PER_IMAGE_FILE)),
        "history": _read_jsonl(os.path.join(path, METRICS_FILE)),
        "wall_s": _float(status.get("wall_s")),
    }
    return files, ""


def load_runs(sweep: Sweep) -> tuple[list[Run], list[MissingCell]]:
    """Loads every finished cell of a sweep and lists the others.

    Args:
      sweep: the loaded ``sweep.json``.

    Returns:
      (runs, missing), both in (variant, fold, seed) order.
    """
    runs, missing = [], []
    for variant in sweep.variants:
        for fold in sweep.folds or (None,):
            for seed in sweep.seeds:
                path = cell_dir(sweep.directory, variant, seed, fold)
                files, reason = _load_cell(path)
                if files is None:
                    missing.append(MissingCell(variant, seed, fold, path, reason))
                else:
                    runs.append(Run(variant, seed, fold, path, **files))
    return runs, missing


# ----------------------------------------------------------------------------- statistics


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


def _model_stats(run: Run) -> dict[str, float]:
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
) -> list[dict[str, Any]]:
    """Paired comparisons of every other variant with the baseline, Holm-adjusted together.

    For each variant (in order) and each metric of `SEED_COMPARISON_METRICS`: a paired t-test over
    the seeds both variants finished (`seed_values`); for each of `IMAGE_COMPARISON_METRICS`: a
    Wilcoxon signed-rank test over the test images both tested (`image_values`). Only runs whose
    (seed, fold) finished in both variants are used. Differences are variant - baseline.

    Args:
      runs_by_variant: variant -> its finished runs (variants without runs are skipped).
      baseline: the reference variant.
      confidence: the intervals' confidence level.
      seed: seed of the Wilcoxon bootstrap intervals.

    Returns:
      One dict per comparison: ``variant``, ``metric``, ``over`` ("seeds" or "images"),
      ``higher_is_better``, the `stats.PairedComparison` fields, and ``pvalue_holm`` (adjusted
      over every comparison in the list that has a p-value).
    """
    base_runs = runs_by_variant.get(baseline, ())
    rows = []
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
        for column in IMAGE_COMPARISON_METRICS:
            a = image_values(base_runs, column, keys)
            b = image_values(runs, column, keys)
            ids = sorted(set(a) & set(b))
            result = stats.wilcoxon_paired(
                [a[i] for i in ids], [b[i] for i in ids], confidence=confidence, seed=seed
            )
            rows.append(_comparison_row(variant, column, "images", result))
    adjusted = stats.holm([row["pvalue"] for row in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["pvalue_holm"] = float(p)
    return rows


def _comparison_row(variant: str, metric: str, over: str, result) -> dict[str, Any]:
    return {
        "variant": variant,
        "metric": metric,
        "over": over,
        "higher_is_better": _METRICS[metric].higher_is_better,
        **dataclasses.asdict(result),
    }


# ----------------------------------------------------------------------------- verdicts


def verdict_from_test(
    estimate: float, pvalue: float, *, higher_is_better: bool, alpha: float = 0.05
) -> str:
    """The verdict on "the variant is better" from a test of variant - baseline.

    Args:
      estimate: the estimated difference variant - baseline.
      pvalue: its (adjusted) two-sided p-value; NaN when the test could not be made.
      higher_is_better: the metric's direction.
      alpha: significance level.

    Returns:
      "supported" (significant, in the better direction), "not supported" (significant, in the
      worse direction) or "not significant" (p >= alpha, or no test).
    """
    if not (math.isfinite(pvalue) and pvalue < alpha and math.isfinite(estimate)):
        return NOT_SIGNIFICANT
    better = estimate > 0 if higher_is_better else estimate < 0
    return SUPPORTED if better else NOT_SUPPORTED


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict for a claim made of several parts (e.g. HD95 lower and boundary IoU higher).

    Args:
      verdicts: the parts' verdicts.

    Returns:
      "not supported" if any part contradicts the claim, else "supported" if every part is
      supported, else "not significant" ("no data" when there are no parts).
    """
    if not verdicts:
        return NO_DATA
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return NOT_SIGNIFICANT


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


def loss_bottom_epoch(
    epochs: Sequence[int], loss: Sequence[float], tolerance: float = LOSS_BOTTOM_TOLERANCE
) -> int | None:
    """The epoch where a loss curve bottoms out: the first within ``tolerance`` of its minimum.

    ``min(e : loss[e] <= min(loss) + tolerance * |min(loss)|)``, which is robust to a long flat
    tail where the exact minimum wanders.

    Args:
      epochs: (n,) epoch numbers, increasing.
      loss: (n,) the loss at each epoch.
      tolerance: relative distance to the minimum.

    Returns:
      The epoch, or None for an empty curve.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if len(loss) == 0:
        return None
    low = loss.min()
    return int(np.asarray(epochs)[np.argmax(loss <= low + tolerance * abs(low))])


def _split_protocol(runs: Sequence[Run]) -> dict[str, Any]:
    """The data split the runs used (read from their config.json), and whether they agree."""
    settings = set()
    for run in runs:
        data = run.config.get("data", {})
        settings.add(
            (
                data.get("split_method"),
                data.get("val_fraction"),
                data.get("test_fraction", 0.0),
                data.get("subset_size"),
                data.get("split_gap"),
            )
        )
    names = ("split_method", "val_fraction", "test_fraction", "subset_size", "split_gap")
    protocols = [dict(zip(names, s, strict=True)) for s in sorted(settings, key=str)]
    test_sets = {tuple(sorted(map(str, run.per_image["id"]))) for run in runs}
    return {
        "protocols": protocols,
        "consistent": len(protocols) <= 1,
        "same_test_images": len(test_sets) <= 1,
        "num_test_images": sorted({len(s) for s in test_sets}),
    }


def _protocol_sentence(protocol: Mapping[str, Any]) -> str:
    method = protocol["split_method"]
    text = {
        "blocked": "split by id blocks per tumour type (no patient leaks between splits)",
        "kfold": "k-fold over id blocks per tumour type (no patient leaks between splits)",
        "random": (
            "the paper's per-slice random train/validation split, which leaks patients between "
            "training and validation"
        ),
    }.get(method, f"split_method={method!r}")
    test = protocol["test_fraction"] or 0.0
    if test > 0:
        text += f"; test = the fixed last {test:g} id block of each tumour type"
    else:
        text += "; no separate test split (test_fraction=0)"
    if protocol.get("subset_size"):
        text += f", within a {protocol['subset_size']}-pair subset"
    return text


def _find(rows: Sequence[Mapping[str, Any]], variant: str, metric: str, over: str):
    for row in rows:
        if (row["variant"], row["metric"], row["over"]) == (variant, metric, over):
            return row
    return None


def claim_verdicts(
    sweep: Sweep,
    runs_by_variant: Mapping[str, Sequence[Run]],
    variant_stats: Mapping[str, Mapping[str, Any]],
    comparisons: Sequence[Mapping[str, Any]],
    *,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """The four claims of the paper, each with its numbers and a verdict.

    (a) the improved model (``paper_model``) has higher mIoU than the U-Net (``baseline``): the
    seed-level paired t-test on test mIoU, Holm-adjusted. (b) it segments edges better: HD95 (mm)
    lower and boundary IoU higher, both seed-level tests; the part verdicts are combined with
    `combine_verdicts`. (c) its loss bottoms out around epoch 8: on the mean validation-loss curve
    over its runs, `loss_bottom_epoch` is in `LOSS_BOTTOM_EPOCHS`. (d) its mIoU settles near 0.8:
    the mean test mIoU over seeds is within `PAPER_MIOU_TOLERANCE` of `PAPER_MIOU`; the claim
    names the split protocol that produced the number (the paper's came from a per-slice split).
    (c) and (d) are definitions, not tests: "supported" or "not supported".

    Args:
      sweep: the sweep.
      runs_by_variant: variant -> its finished runs.
      variant_stats: variant -> `summarize_variant` result.
      comparisons: `compare_with_baseline` rows.
      alpha: significance level for (a) and (b), on Holm-adjusted p-values.

    Returns:
      One dict per claim: ``id`` ("a".."d"), ``claim``, ``verdict`` and the numbers behind it
      (``details``: a sentence; other keys machine-readable).
    """
    model, baseline = sweep.paper_model, sweep.baseline
    claims = []

    def add(claim_id, claim, verdict, details, **numbers):
        claims.append(
            {"id": claim_id, "claim": claim, "verdict": verdict, "details": details, **numbers}
        )

    texts = {
        "a": "The improved U-Net has a higher mIoU than the U-Net.",
        "b": "The improved U-Net segments edges better (lower HD95, higher boundary IoU).",
        "c": "The improved U-Net's loss bottoms out around epoch 8.",
        "d": "The improved U-Net's mIoU settles near 0.8.",
    }
    runs = runs_by_variant.get(model, ()) if model else ()
    if not runs:
        why = "no paper_model in sweep.json" if not model else f"no finished run of {model}"
        for claim_id, text in texts.items():
            add(claim_id, text, NO_DATA, why)
        return claims

    def tested(metric):
        row = _find(comparisons, model, metric, "seeds")
        if row is None:
            return NO_DATA, None, f"{metric}: no comparison with {baseline}"
        verdict = verdict_from_test(
            row["estimate"],
            row["pvalue_holm"],
            higher_is_better=row["higher_is_better"],
            alpha=alpha,
        )
        digits = _METRICS[metric].digits
        means = [variant_stats[v]["metrics"][metric]["mean"] for v in (model, baseline)]
        details = (
            f"{_METRICS[metric].label}: {model} {_fmt(means[0], digits)} vs {baseline} "
            f"{_fmt(means[1], digits)}, difference {_fmt(row['estimate'], digits)} "
            f"[{_fmt(row['ci_low'], digits)}, {_fmt(row['ci_high'], digits)}], "
            f"p = {_fmt_p(row['pvalue'])}, Holm p = {_fmt_p(row['pvalue_holm'])} "
            f"(paired t-test over {row['n']} seeds)"
        )
        return verdict, row, details

    verdict, row, details = tested("miou")
    add("a", texts["a"], verdict, details, comparison=row)

    parts = [tested("hd95_mm"), tested("boundary_iou")]
    details = "; ".join(p[2] for p in parts)
    image_row = _find(comparisons, model, "hd95_px", "images")
    if image_row is not None:
        details += (
            f"; per image HD95 (px): Hodges-Lehmann difference {_fmt(image_row['estimate'], 2)} "
            f"[{_fmt(image_row['ci_low'], 2)}, {_fmt(image_row['ci_high'], 2)}], Holm p = "
            f"{_fmt_p(image_row['pvalue_holm'])} (Wilcoxon over {image_row['n']} images)"
        )
    add(
        "b",
        texts["b"],
        combine_verdicts([p[0] for p in parts]),
        details,
        comparisons=[p[1] for p in parts],
    )

    epochs, loss, _, _ = mean_curve(runs, "val_loss")
    bottom = loss_bottom_epoch(epochs, loss)
    if bottom is None:
        add("c", texts["c"], NO_DATA, f"no val_loss in {model}'s metrics.jsonl")
    else:
        lo, hi = LOSS_BOTTOM_EPOCHS
        minimum_epoch = int(epochs[np.argmin(loss)])
        add(
            "c",
            texts["c"],
            SUPPORTED if lo <= bottom <= hi else NOT_SUPPORTED,
            f"mean validation-loss curve over {len(runs)} runs of {model}: first within "
            f"{LOSS_BOTTOM_TOLERANCE:.0%} of its minimum ({_fmt(loss.min(), 4)}, epoch "
            f"{minimum_epoch}) at epoch {bottom}; 'around 8' = epochs {lo}-{hi}",
            bottom_epoch=bottom,
            minimum_epoch=minimum_epoch,
            curve="val_loss",
        )

    miou = variant_stats[model]["metrics"]["miou"]
    protocol = _split_protocol(runs)
    protocol_text = "; ".join(_protocol_sentence(p) for p in protocol["protocols"])
    if not math.isfinite(miou["mean"]):
        add("d", texts["d"], NO_DATA, f"no test mIoU of {model}")
    else:
        near = abs(miou["mean"] - PAPER_MIOU) <= PAPER_MIOU_TOLERANCE
        add(
            "d",
            texts["d"],
            SUPPORTED if near else NOT_SUPPORTED,
            f"mean test mIoU of {model} {_fmt(miou['mean'], 4)} [{_fmt(miou['ci_low'], 4)}, "
            f"{_fmt(miou['ci_high'], 4)}] over {miou['n']} seeds; 'near 0.8' = within "
            f"{PAPER_MIOU_TOLERANCE} of {PAPER_MIOU}. Split: {protocol_text}. The paper's 0.8 "
            "came from a per-slice random split that leaks patients.",
            miou_mean=miou["mean"],
            split=protocol["protocols"],
        )
    return claims


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)  # the Agg canvas: no GUI backend, no pyplot state
    fig.savefig(path, dpi=100, format="png")
    return path


def plot_test_dice(
    runs_by_variant: Mapping[str, Sequence[Run]], path: str, *, metric: str = "dice"
) -> str:
    """Box plot of a test metric per variant with one dot per seed (the seed's fold mean).

    Args:
      runs_by_variant: variant -> its finished runs (a variant without runs gets an empty slot).
      path: the PNG to write.
      metric: the ``eval_test.json`` key to plot.

    Returns:
      ``path``.
    """
    names = list(runs_by_variant)
    values = [list(seed_values(runs_by_variant[n], metric).values()) for n in names]
    values = [[v for v in vs if math.isfinite(v)] for vs in values]
    fig = Figure(figsize=(1.6 + 1.3 * len(names), 4.0))
    ax = fig.subplots()
    positions = np.arange(1, len(names) + 1)
    ax.boxplot(values, positions=positions, widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)  # fixed, so the figure is reproducible
    for x, vs in zip(positions, values, strict=True):
        ax.scatter(x + jitter.uniform(-0.12, 0.12, len(vs)), vs, s=18, zorder=3)
    ax.set_xticks(positions, names, rotation=20, ha="right")
    ax.set_ylabel(f"test {_METRICS[metric].label}" if metric in _METRICS else f"test {metric}")
    ax.set_title("Test split, one dot per seed")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_validation_curves(
    runs_by_variant: Mapping[str, Sequence[Run]], path: str, *, key: str = "val_miou"
) -> str:
    """Mean per-epoch validation curve per variant, with a min-max band over its runs.

    Args:
      runs_by_variant: variant -> its finished runs.
      path: the PNG to write.
      key: the ``metrics.jsonl`` key to plot.

    Returns:
      ``path``.
    """
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.subplots()
    for name, runs in runs_by_variant.items():
        epochs, mean, low, high = mean_curve(runs, key)
        if len(epochs) == 0:
            continue
        (line,) = ax.plot(epochs, mean, label=f"{name} ({len(runs)} runs)")
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{key} (mean, band = min-max over runs)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- writing


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _cell_name(variant: str, seed: int, fold: int | None) -> str:
    return f"{variant} seed {seed}" + ("" if fold is None else f" fold {fold}")


def _summary_cell(summary: Mapping[str, float], digits: int) -> str:
    if summary["n"] == 0:
        return "n/a"
    text = f"{_fmt(summary['mean'], digits)} ± {_fmt(summary['std'], digits)}"
    if math.isfinite(summary["ci_low"]):
        text += f" [{_fmt(summary['ci_low'], digits)}, {_fmt(summary['ci_high'], digits)}]"
    return text


def _markdown(
    sweep: Sweep,
    runs: Sequence[Run],
    missing: Sequence[MissingCell],
    variant_stats: Mapping[str, Mapping[str, Any]],
    comparisons: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    figures: Mapping[str, str],
    alpha: float,
) -> str:
    lines = [f"# Sweep report: {sweep.name}", ""]
    folds = "none" if sweep.folds is None else ", ".join(map(str, sweep.folds))
    lines += [
        f"- Base config: `{sweep.base_config}`; baseline: **{sweep.baseline}**; paper model: "
        f"**{sweep.paper_model or 'not given'}**.",
        f"- Seeds: {', '.join(map(str, sweep.seeds))}; folds: {folds}. "
        f"{len(runs)} finished runs, {len(missing)} missing.",
    ]
    protocol = _split_protocol(runs)
    for p in protocol["protocols"]:
        lines.append(
            f"- Data split ({', '.join(f'{k}={v}' for k, v in p.items())}): "
            f"{_protocol_sentence(p)}."
        )
    if not protocol["consistent"]:
        lines.append("- **Warning: the runs were split differently (see above).**")
    if runs:
        same = "the same images in every run"
        if not protocol["same_test_images"]:
            same = (
                "**not the same images in every run** (e.g. a seed-drawn subset); per-image "
                "comparisons pair images by id"
            )
        sizes = ", ".join(map(str, protocol["num_test_images"]))
        lines.append(f"- Test images per run: {sizes}; {same}.")
    lines.append("")

    lines += [
        "## Test metrics per variant",
        "",
        "Mean ± std [95% t interval] over seeds (a seed's value is the mean over its folds). "
        "Parameters and GFLOPs per image at the run's image size; throughput: median training "
        "images/s over epochs and runs.",
        "",
    ]
    header = ["variant", "runs", "seeds"] + [m.label for m in SUMMARY_METRICS]
    header += ["params", "GFLOPs", "train img/s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in variant_stats.items():
        cells = [name, str(row["n_runs"]), str(row["n_seeds"])]
        cells += [_summary_cell(row["metrics"][m.key], m.digits) for m in SUMMARY_METRICS]
        params = row.get("params")
        cells += [
            "n/a" if params is None else f"{params:,}",
            "n/a" if row.get("gflops") is None else f"{row['gflops']:.3g}",
            _fmt(row["train_images_per_s"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    tested = [c for c in comparisons if math.isfinite(c["pvalue"])]
    lines += [
        f"## Paired comparisons with {sweep.baseline}",
        "",
        f"{len(comparisons)} comparisons ({len(tested)} with a p-value); Holm's correction over "
        f"all {len(tested)}. Difference = variant - {sweep.baseline}. Over seeds: paired t-test, "
        "effect Cohen's d_z, t interval of the mean difference. Over images: Wilcoxon "
        "signed-rank (zero differences split) on each image's value averaged over runs, effect "
        "rank-biserial r, Hodges-Lehmann difference with a bootstrap interval. HD95 per image is "
        "in pixels.",
        "",
    ]
    header = ["variant", "metric", "over", "n", "difference [95% CI]", "effect", "p", "Holm p"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        digits = _METRICS[c["metric"]].digits
        effect = "d_z" if c["effect_name"] == "cohens_dz" else "r"
        better = "higher" if c["higher_is_better"] else "lower"
        cells = [
            c["variant"],
            f"{_METRICS[c['metric']].label} ({better} is better)",
            c["over"],
            str(c["n"]),
            f"{_fmt(c['estimate'], digits)} [{_fmt(c['ci_low'], digits)}, "
            f"{_fmt(c['ci_high'], digits)}]",
            f"{effect} = {_fmt(c['effect'], 2)}",
            _fmt_p(c["pvalue"]),
            _fmt_p(c["pvalue_holm"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not comparisons:
        lines.append("| (no variant with finished runs besides the baseline) |" + " |" * 7)
    lines.append("")

    lines += [
        "## Claims of the paper",
        "",
        f"Verdicts (a) and (b) from the seed-level tests at alpha = {alpha} (Holm-adjusted): "
        "supported / not supported (significant the other way) / not significant.",
        "",
    ]
    for claim in claims:
        lines.append(
            f"- ({claim['id']}) {claim['claim']} **{claim['verdict']}**: {claim['details']}"
        )
    lines.append("")

    if missing:
        lines += ["## Missing cells", "", "Not averaged:", ""]
        for m in missing:
            lines.append(f"- {_cell_name(m.variant, m.seed, m.fold)}: {m.reason} (`{m.path}`)")
        lines.append("")

    lines += ["## Figures", ""]
    for title, path in figures.items():
        lines += [f"![{title}]({os.path.basename(path)})", ""]
    return "\n".join(lines)


def _write_csv(path: str, variant_stats: Mapping[str, Mapping[str, Any]]) -> None:
    fields = ["variant", "n_runs", "n_seeds"]
    for m in SUMMARY_METRICS:
        fields += [f"{m.key}_{s}" for s in ("mean", "std", "ci_low", "ci_high")]
    fields += ["params", "gflops", "train_images_per_s", "wall_s"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for name, row in variant_stats.items():
            out = {"variant": name, "n_runs": row["n_runs"], "n_seeds": row["n_seeds"]}
            for m in SUMMARY_METRICS:
                for s in ("mean", "std", "ci_low", "ci_high"):
                    out[f"{m.key}_{s}"] = row["metrics"][m.key][s]
            for key in ("params", "gflops", "train_images_per_s", "wall_s"):
                out[key] = row.get(key)
            writer.writerow(out)


def _jsonable(value: Any) -> Any:
    """NaN and inf become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(
    directory: str | os.PathLike,
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    model_stats: bool = True,
    prediction_figure: PredictionFigure | None = None,
) -> dict[str, str]:
    """Writes the sweep's report into its folder.

    Files: ``report.md``, ``summary.csv`` (one row per variant), ``summary.json`` (everything:
    sweep, split protocol, per-variant statistics, comparisons, claims, missing cells, figures;
    NaN as null), ``test_dice.png`` and ``val_miou.png``.

    Args:
      directory: the sweep folder (see the module docstring for its layout).
      alpha: significance level of the verdicts (on Holm-adjusted p-values).
      confidence: confidence level of every interval.
      model_stats: compute parameters and GFLOPs of each variant's model (`model_summary`, one
        XLA compilation per variant at the run's image size; cached per variant).
      prediction_figure: hook for the side-by-side prediction figure (the paper's figure 8),
        which needs the trained models: called as ``prediction_figure(sweep, directory)`` after
        the other figures; the PNG path it returns is embedded in the report.

    Returns:
      name -> path of every written file (``"report"``, ``"summary_csv"``, ``"summary_json"`` and
      one entry per figure).

    Raises:
      FileNotFoundError, ValueError: a missing or invalid ``sweep.json`` (see `load_sweep`).
    """
    sweep = load_sweep(directory)
    directory = sweep.directory
    runs, missing = load_runs(sweep)
    runs_by_variant = {name: [r for r in runs if r.variant == name] for name in sweep.variants}
    variant_stats = {}
    for name, variant_runs in runs_by_variant.items():
        row = summarize_variant(variant_runs, confidence)
        row.update(params=None, gflops=None)
        if model_stats and variant_runs:
            row.update(_model_stats(variant_runs[0]))
        variant_stats[name] = row
    comparisons = compare_with_baseline(runs_by_variant, sweep.baseline, confidence=confidence)
    claims = claim_verdicts(sweep, runs_by_variant, variant_stats, comparisons, alpha=alpha)

    figures = {
        "test Dice per variant": plot_test_dice(
            runs_by_variant, os.path.join(directory, TEST_DICE_FIGURE)
        ),
        "validation mIoU per epoch": plot_validation_curves(
            runs_by_variant, os.path.join(directory, VAL_MIOU_FIGURE)
        ),
    }
    if prediction_figure is not None:
        path = prediction_figure(sweep, directory)
        if path:
            figures["predictions"] = path

    paths = {
        "report": os.path.join(directory, REPORT_FILE),
        "summary_csv": os.path.join(directory, SUMMARY_CSV),
        "summary_json": os.path.join(directory, SUMMARY_JSON),
    }
    with open(paths["report"], "w") as f:
        f.write(_markdown(sweep, runs, missing, variant_stats, comparisons, claims, figures, alpha))
    _write_csv(paths["summary_csv"], variant_stats)
    summary = {
        "sweep": {k: v for k, v in dataclasses.asdict(sweep).items() if k != "directory"},
        "split": _split_protocol(runs),
        "alpha": alpha,
        "confidence": confidence,
        "variants": variant_stats,
        "num_comparisons": int(sum(math.isfinite(c["pvalue"]) for c in comparisons)),
        "comparisons": comparisons,
        "claims": claims,
        "finished": [
            {"variant": r.variant, "seed": r.seed, "fold": r.fold, "path": r.path} for r in runs
        ],
        "missing": [dataclasses.asdict(m) for m in missing],
        "figures": {title: os.path.basename(path) for title, path in figures.items()},
    }
    with open(paths["summary_json"], "w") as f:
        json.dump(_jsonable(summary), f, indent=1, allow_nan=False)
    return {**paths, **{title: path for title, path in figures.items()}}
