"""The text of a sweep report: ``report.md`` and ``summary.csv``."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bts_jax.experiments.analysis import METRICS, SUMMARY_METRICS
from bts_jax.experiments.results import MissingCell, Run, split_protocol
from bts_jax.experiments.sweeps import CODE_CHECKS_FILE, SweepDefinition
from bts_jax.experiments.training import training_table


def fmt(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals, or "n/a" when it is missing or not finite."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value with 4 decimals ("<0.0001" below), or "n/a"."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def protocol_sentence(protocol: Mapping[str, Any]) -> str:
    """A data split protocol (`bts_jax.experiments.results.split_protocol`) in words."""
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


def _cell_name(variant: str, seed: int, fold: int | None) -> str:
    return f"{variant} seed {seed}" + ("" if fold is None else f" fold {fold}")


def _summary_cell(summary: Mapping[str, float], digits: int) -> str:
    if summary["n"] == 0:
        return "n/a"
    text = f"{fmt(summary['mean'], digits)} ± {fmt(summary['std'], digits)}"
    if math.isfinite(summary["ci_low"]):
        text += f" [{fmt(summary['ci_low'], digits)}, {fmt(summary['ci_high'], digits)}]"
    return text


def report_markdown(
    sweep: SweepDefinition,
    runs: Sequence[Run],
    missing: Sequence[MissingCell],
    variant_stats: Mapping[str, Mapping[str, Any]],
    comparisons: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    figures: Mapping[str, str],
    alpha: float,
    provenance: Mapping[str, Any] | None = None,
    reproducibility: Mapping[str, Any] | None = None,
    training: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The text of ``report.md``.

    Args:
      sweep: the sweep's definition.
      runs: its finished runs.
      missing: its unfinished cells.
      variant_stats: variant -> `bts_jax.experiments.analysis.summarize_variant` row (with
        ``params``, ``gflops`` and ``types``, `bts_jax.experiments.analysis.summarize_types`).
      comparisons: `bts_jax.experiments.analysis.compare_with_baseline` rows.
      claims: `bts_jax.experiments.claims.claim_verdicts`.
      figures: title -> PNG path of each figure.
      alpha: the significance level of the verdicts.
      provenance: `bts_jax.experiments.provenance.environments` of the runs.
      reproducibility: the sweep's ``reproducibility.json`` (`bts_jax.experiments.cells`).
      training: `bts_jax.experiments.training.training_summary` of the runs (its table follows
        the metrics).

    Returns:
      The markdown.
    """
    lines = _header(sweep, runs, missing)
    lines += _variant_table(variant_stats, sweep.scored_title)
    if training:
        lines += training_table(training, sweep.scored_title)
    lines += _type_table(variant_stats, sweep.scored_title)
    lines += _comparison_table(sweep, comparisons)
    lines += _claim_lines(claims, alpha)
    lines += _provenance_lines(provenance, reproducibility)
    if missing:
        # No paths: the report sits in the sweep folder, where each cell is <variant>/seed_<n>.
        lines += ["## Missing cells", "", "Not averaged:", ""]
        for m in missing:
            lines.append(f"- {_cell_name(m.variant, m.seed, m.fold)}: {m.reason}")
        lines.append("")
    lines += ["## Figures", ""]
    for title, path in figures.items():
        lines += [f"![{title}]({os.path.basename(path)})", ""]
    return "\n".join(lines)


def _header(sweep: SweepDefinition, runs: Sequence[Run], missing: Sequence[MissingCell]):
    lines = [f"# Sweep report: {sweep.name}", ""]
    folds = "none" if sweep.folds is None else ", ".join(map(str, sweep.folds))
    lines += [
        f"- Base config: `{sweep.base_config}`; baseline: **{sweep.baseline}**; paper model: "
        f"**{sweep.paper_model or 'not given'}**.",
        f"- Seeds: {', '.join(map(str, sweep.seeds))}{_own_seeds(sweep)}; folds: {folds}. "
        f"{len(runs)} finished runs, {len(missing)} missing.",
    ]
    protocol = split_protocol(runs)
    for p in protocol["protocols"]:
        lines.append(
            f"- Data split ({', '.join(f'{k}={v}' for k, v in p.items())}): {protocol_sentence(p)}."
        )
    if not protocol["consistent"]:
        lines.append("- **Warning: the runs were split differently (see above).**")
    if sweep.test_folder:
        block = (
            f"the last {sweep.test_heldout_fraction:g} of each tumour type's ids, minus the "
            "bundled samples' ids (patients no cell trained or selected on), "
            if sweep.test_heldout_fraction
            else ""
        )
        lines.append(
            f"- **Test set**: the external folder `{sweep.test_folder}`: {block}each image scored "
            "at its own size (`eval_external_test.json` of each cell)."
        )
    if runs:
        same = "the same images in every run"
        if not protocol["same_test_images"]:
            same = (
                "**not the same images in every run** (e.g. a seed-drawn subset); per-image "
                "comparisons pair images by id"
            )
        sizes = ", ".join(map(str, protocol["num_test_images"]))
        lines.append(f"- {sweep.scored_title} images per run: {sizes}; {same}.")
    return lines + [""]


def _own_seeds(sweep: SweepDefinition) -> str:
    own = [f"{name}: {', '.join(map(str, seeds))}" for name, seeds in sweep.variant_seeds.items()]
    return f" ({'; '.join(own)})" if own else ""


def _variant_table(variant_stats: Mapping[str, Mapping[str, Any]], title: str) -> list[str]:
    lines = [
        f"## {title} metrics per variant",
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
            fmt(row["train_images_per_s"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _type_table(variant_stats: Mapping[str, Mapping[str, Any]], title: str) -> list[str]:
    kinds = list(dict.fromkeys(k for row in variant_stats.values() for k in row.get("types", {})))
    if not kinds:
        return []
    lines = [
        f"## {title} Dice per tumour type",
        "",
        f"Each type's Dice over its {title.lower()} pixels (pooled over its images), mean ± std "
        "over seeds.",
        "",
        "| variant | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for name, row in variant_stats.items():
        types = row.get("types", {})
        cells = [
            f"{fmt(types[k]['mean'], 3)} ± {fmt(types[k]['std'], 3)}" if k in types else "n/a"
            for k in kinds
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _comparison_table(sweep: SweepDefinition, comparisons: Sequence[Mapping[str, Any]]):
    tested = [c for c in comparisons if math.isfinite(c["pvalue"])]
    level = comparisons[0].get("power_alpha") if comparisons else None
    lines = [
        f"## Paired comparisons with {sweep.baseline}",
        "",
        f"{len(comparisons)} comparisons ({len(tested)} with a p-value); Holm's correction over "
        f"all {len(tested)}. Difference = variant - {sweep.baseline}. Over seeds: paired t-test, "
        "effect Cohen's d_z, t interval of the mean difference. Over images: Wilcoxon "
        "signed-rank (zero differences split) on each image's value averaged over runs, effect "
        "rank-biserial r, Hodges-Lehmann difference with a bootstrap interval. HD95 per image is "
        "in pixels.",
        "",
        f"**Power.** *Detectable* is the smallest difference the comparison would find with "
        f"probability 0.8 at Holm's strictest level (alpha / {len(tested) or 1} = "
        f"{fmt(level, 4)}), from the spread of its paired differences (scipy's noncentral "
        "t; the t-test's figure for the Wilcoxon rows): a *not significant* row means no "
        "difference larger than that. *Seeds for 0.01* is how many seeds a difference of 0.01 "
        "would need at that spread.",
        "",
    ]
    header = ["variant", "metric", "over", "n", "difference [95% CI]", "effect", "p", "Holm p"]
    header += ["detectable", "seeds for 0.01"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        digits = METRICS[c["metric"]].digits
        effect = "d_z" if c["effect_name"] == "cohens_dz" else "r"
        better = "higher" if c["higher_is_better"] else "lower"
        needed = c.get("seeds_needed")
        cells = [
            c["variant"],
            f"{METRICS[c['metric']].label} ({better} is better)",
            c["over"],
            str(c["n"]),
            f"{fmt(c['estimate'], digits)} [{fmt(c['ci_low'], digits)}, "
            f"{fmt(c['ci_high'], digits)}]",
            f"{effect} = {fmt(c['effect'], 2)}",
            fmt_p(c["pvalue"]),
            fmt_p(c["pvalue_holm"]),
            fmt(c.get("detectable"), digits),
            "" if needed is None else fmt(needed, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not comparisons:
        lines.append("| (no variant with finished runs besides the baseline) |" + " |" * 9)
    return lines + [""]


def _claim_lines(claims: Sequence[Mapping[str, Any]], alpha: float) -> list[str]:
    lines = [
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
    return lines + [""]


def _test_image_lines(found: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- Test images scored, as recorded by {len(group['runs'])} cell(s): "
        f"{group['description']}."
        for group in found["recorded"]
    ]
    if found["unrecorded"]:
        lines.append(
            f"- Test images not recorded by {len(found['unrecorded'])} cell(s) (scored by code "
            "that did not record them yet)."
        )
    now = found["now"] or "not readable where the report was written"
    lines.append(f"- The test folder now: {now}.")
    for warning in found["warnings"]:
        lines.append(f"- **Warning: {warning}.**")
    return lines


def _provenance_lines(
    provenance: Mapping[str, Any] | None, reproducibility: Mapping[str, Any] | None
) -> list[str]:
    lines = ["## Provenance", ""]
    if provenance:
        for env in provenance["environments"]:
            lines.append(f"- {len(env['runs'])} run(s): {env['description']}.")
        if provenance["missing"]:
            lines.append(f"- No environment.json: {', '.join(provenance['missing'])}.")
        for warning in provenance["warnings"]:
            lines.append(f"- **Warning: the cells ran in different environments.** {warning}.")
        for line in provenance["explained"]:
            lines.append(f"- Code checked: {line} (`{CODE_CHECKS_FILE}`).")
        if "test_images" in provenance:
            lines += _test_image_lines(provenance["test_images"])
    if reproducibility is None:
        lines.append(
            "- Reproducibility: not checked (`sweep.py --reproduce K` trains a cell again)."
        )
    elif reproducibility["identical"]:
        lines.append(
            f"- Reproducibility: cell {reproducibility['cell']} trained again from scratch gave "
            f"bit-identical {', '.join(reproducibility['compared'])}."
        )
    else:
        lines.append(
            f"- Reproducibility: cell {reproducibility['cell']} trained again from scratch "
            f"differs: {'; '.join(reproducibility['differences'])}."
        )
    return lines + [""]


def write_summary_csv(path: str, variant_stats: Mapping[str, Mapping[str, Any]]) -> None:
    """Writes ``summary.csv``: one row per variant, every summary statistic a column.

    Args:
      path: the file.
      variant_stats: variant -> `bts_jax.experiments.analysis.summarize_variant` row.
    """
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
