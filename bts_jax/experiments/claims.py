"""Verdicts on the paper's claims (docs/design.md section 7), from a sweep's comparisons.

The claims get a verdict from the seed-level tests (seeds are the independent replicates; the
image-level tests show where the difference lies on these fixed images).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bts_jax.experiments.analysis import METRICS, mean_curve
from bts_jax.experiments.markdown import fmt, fmt_p, protocol_sentence
from bts_jax.experiments.results import Run, split_protocol
from bts_jax.experiments.sweeps import SweepDefinition

# Claim (c): the loss "bottoms out" at the first epoch whose mean validation loss is within this
# fraction of the curve's minimum; "around epoch 8" means an epoch in this range.
LOSS_BOTTOM_TOLERANCE = 0.05


LOSS_BOTTOM_EPOCHS = (5, 11)
# Claim (c) is testable only where the curve could still fall: the runs go on past its bottom
# epoch (a curve cut there has not shown it stopped), at a learning rate that averages at least
# this fraction of the peak over the epochs after it (a schedule near 0 flattens any curve).
LOSS_BOTTOM_MIN_RATE = 0.1


# Claim (d): mIoU "settles near 0.8": the mean test mIoU is within this distance of it.
PAPER_MIOU = 0.8


PAPER_MIOU_TOLERANCE = 0.05


SUPPORTED = "supported"


NOT_SUPPORTED = "not supported"


NOT_SIGNIFICANT = "not significant"


NO_DATA = "no data"


NOT_TESTABLE = "not testable"


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


def loss_bottom_untestable(runs: Sequence[Run], bottom: int) -> str:
    """Why claim (c) cannot be tested at ``bottom`` on these runs ("" when it can).

    Args:
      runs: runs of one variant (their ``metrics.jsonl``: ``epoch``, ``learning_rate``).
      bottom: the epoch where their mean validation-loss curve bottoms out.

    Returns:
      "" when the runs go on past ``bottom`` at a learning rate that averages at least
      `LOSS_BOTTOM_MIN_RATE` of their peak over the epochs after it; else the reason, in words.
    """
    epochs, rates, _, _ = mean_curve(runs, "learning_rate")
    if not epochs.size:
        return "no learning_rate in metrics.jsonl"
    after = rates[epochs > bottom]
    if not after.size:
        return f"epoch {bottom} is the last one trained, so the curve was cut there"
    if after.mean() < LOSS_BOTTOM_MIN_RATE * rates.max():
        return (
            f"after epoch {bottom} the learning rate averages {after.mean():.3g}, "
            f"{after.mean() / rates.max():.1%} of its peak ({rates.max():.3g}): the schedule, "
            "not the model, flattens the curve"
        )
    return ""


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


def _find(rows: Sequence[Mapping[str, Any]], variant: str, metric: str, over: str):
    for row in rows:
        if (row["variant"], row["metric"], row["over"]) == (variant, metric, over):
            return row
    return None


def claim_verdicts(
    sweep: SweepDefinition,
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
    over its runs, `loss_bottom_epoch` is in `LOSS_BOTTOM_EPOCHS`, or "not testable" where
    `loss_bottom_untestable` says the runs cannot show it. (d) its mIoU settles near 0.8:
    the mean test mIoU over seeds is within `PAPER_MIOU_TOLERANCE` of `PAPER_MIOU`; the claim
    names the split protocol that produced the number (the paper's came from a per-slice split).
    (c) and (d) are definitions, not tests: "supported" or "not supported" (or, for (c), "not
    testable").

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
        digits = METRICS[metric].digits
        means = [variant_stats[v]["metrics"][metric]["mean"] for v in (model, baseline)]
        details = (
            f"{METRICS[metric].label}: {model} {fmt(means[0], digits)} vs {baseline} "
            f"{fmt(means[1], digits)}, difference {fmt(row['estimate'], digits)} "
            f"[{fmt(row['ci_low'], digits)}, {fmt(row['ci_high'], digits)}], "
            f"p = {fmt_p(row['pvalue'])}, Holm p = {fmt_p(row['pvalue_holm'])} "
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
            f"; per image HD95 (px): Hodges-Lehmann difference {fmt(image_row['estimate'], 2)} "
            f"[{fmt(image_row['ci_low'], 2)}, {fmt(image_row['ci_high'], 2)}], Holm p = "
            f"{fmt_p(image_row['pvalue_holm'])} (Wilcoxon over {image_row['n']} images)"
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
        untestable = loss_bottom_untestable(runs, bottom)
        verdict = SUPPORTED if lo <= bottom <= hi else NOT_SUPPORTED
        add(
            "c",
            texts["c"],
            NOT_TESTABLE if untestable else verdict,
            f"mean validation-loss curve over {len(runs)} runs of {model}: first within "
            f"{LOSS_BOTTOM_TOLERANCE:.0%} of its minimum ({fmt(loss.min(), 4)}, epoch "
            f"{minimum_epoch}) at epoch {bottom}; 'around 8' = epochs {lo}-{hi}"
            + (f"; not testable with these runs: {untestable}" if untestable else ""),
            bottom_epoch=bottom,
            minimum_epoch=minimum_epoch,
            curve="val_loss",
        )

    miou = variant_stats[model]["metrics"]["miou"]
    protocol = split_protocol(runs)
    protocol_text = "; ".join(protocol_sentence(p) for p in protocol["protocols"])
    if not math.isfinite(miou["mean"]):
        add("d", texts["d"], NO_DATA, f"no test mIoU of {model}")
    else:
        near = abs(miou["mean"] - PAPER_MIOU) <= PAPER_MIOU_TOLERANCE
        add(
            "d",
            texts["d"],
            SUPPORTED if near else NOT_SUPPORTED,
            f"mean test mIoU of {model} {fmt(miou['mean'], 4)} [{fmt(miou['ci_low'], 4)}, "
            f"{fmt(miou['ci_high'], 4)}] over {miou['n']} seeds; 'near 0.8' = within "
            f"{PAPER_MIOU_TOLERANCE} of {PAPER_MIOU}. Split: {protocol_text}. The paper's 0.8 "
            "came from a per-slice random split that leaks patients.",
            miou_mean=miou["mean"],
            split=protocol["protocols"],
        )
    return claims
