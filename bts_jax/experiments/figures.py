"""The figures of a sweep report: test metric per variant, validation curves per epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bts_jax.experiments.analysis import METRICS, mean_curve, seed_values
from bts_jax.experiments.results import Run


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)  # the Agg canvas: no GUI backend, no pyplot state
    fig.savefig(path, dpi=100, format="png")
    return path


def plot_test_dice(
    runs_by_variant: Mapping[str, Sequence[Run]],
    path: str,
    *,
    metric: str = "dice",
    split_title: str = "Test",
) -> str:
    """Box plot of a scored metric per variant with one dot per seed (the seed's fold mean).

    Args:
      runs_by_variant: variant -> its finished runs (a variant without runs gets an empty slot).
      path: the PNG to write.
      metric: the key of the scored evaluation (``eval_test.json``...) to plot.
      split_title: the scored split's name ("Test" or "Validation").

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
    label = METRICS[metric].label if metric in METRICS else metric
    ax.set_ylabel(f"{split_title.lower()} {label}")
    ax.set_title(f"{split_title} split, one dot per seed")
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
