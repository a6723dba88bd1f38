"""ROC curves and score histograms for OOD detectors, rendered off-screen (Agg canvas)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import auroc, roc_points

Scores = Mapping[str, "tuple[np.ndarray, np.ndarray]"]
TAIL_PERCENT = 0.5  # histogram_range: the central range is the 0.5..99.5 percentiles
REACH = 0.25        # ...and an end is clipped when it lies beyond a quarter of that range outside it


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no display or pyplot state involved
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def draw_roc_curves(scores: Scores, title: str = "ROC (OOD = positive)") -> Figure:
    """Return a figure with every detector's ROC curve (x: FPR on ID, y: TPR on OOD, the points of
    `roc_points`), AUROC in its legend label, plus the chance diagonal and a dashed TPR = 0.95 line.

    `scores` maps detector name -> (id_scores, ood_scores), higher = more OOD.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, (id_s, ood_s) in scores.items():
        fpr, tpr, _ = roc_points(id_s, ood_s)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(id_s, ood_s):.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (fraction of ID flagged)",
           ylabel="TPR (fraction of OOD flagged)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_roc_curves(scores: Scores, path: str | Path, title: str = "ROC (OOD = positive)") -> Path:
    """Save `draw_roc_curves(scores, title)` (every detector's ROC curve, AUROC in the legend) as a PNG at
    `path` (parent folders are created); returns `path`."""
    return _save(draw_roc_curves(scores, title), path)


def histogram_range(values: np.ndarray, tail: float = TAIL_PERCENT, reach: float = REACH) -> tuple[float, float]:
    """Return (lo, hi), the score range a histogram of `values` spans: the smallest and largest value, except
    that an end lying more than `reach` times the central range (the `tail`..100-`tail` percentiles) beyond
    that range is replaced by the percentile, so one huge score (Mahalanobis, ViM) cannot squeeze the rest
    into one bin. hi > lo always (a constant score gets lo - 0.5..lo + 0.5)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0, 1.0
    p_lo, p_hi = np.percentile(values, [tail, 100.0 - tail])
    span = p_hi - p_lo
    lo = float(values.min()) if values.min() >= p_lo - reach * span else float(p_lo)
    hi = float(values.max()) if values.max() <= p_hi + reach * span else float(p_hi)
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def draw_score_histograms(scores: Scores, bins: int = 50) -> Figure:
    """Return a figure with one subplot per detector: density histograms of its ID and OOD scores on shared
    bins over that detector's own `histogram_range` of ID and OOD together. Scores outside the range are
    counted in the edge bins, and the subplot says how many were (and the range's ends).

    `scores` maps detector name -> (id_scores, ood_scores), higher = more OOD.
    """
    if not scores:
        raise ValueError("draw_score_histograms: no detectors to plot")
    n = len(scores)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4 * ncols, 3 * nrows))
    for i, (name, (id_s, ood_s)) in enumerate(scores.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        id_s = np.asarray(id_s, dtype=np.float64)
        ood_s = np.asarray(ood_s, dtype=np.float64)
        both = np.concatenate([id_s, ood_s])
        lo, hi = histogram_range(both)
        edges = np.linspace(lo, hi, bins + 1)
        ax.hist(np.clip(id_s, lo, hi), bins=edges, density=True, alpha=0.55, label=f"ID (n={id_s.size})")
        ax.hist(np.clip(ood_s, lo, hi), bins=edges, density=True, alpha=0.55, label=f"OOD (n={ood_s.size})")
        clipped = [f"{k} {side} {edge:.4g}" for k, side, edge in
                   ((int((both < lo).sum()), "below", lo), (int((both > hi).sum()), "above", hi)) if k]
        if clipped:
            ax.text(0.02, 0.97, "in the edge bins: " + ", ".join(clipped), transform=ax.transAxes, fontsize=7,
                    va="top")
        ax.set(title=name, xlabel="OOD score (higher = more OOD)", ylabel="density")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_score_histograms(scores: Scores, path: str | Path, bins: int = 50) -> Path:
    """Save `draw_score_histograms(scores, bins)` (per detector, ID and OOD score densities over the
    detector's own robust range, outliers counted in the edge bins) as a PNG at `path`; returns `path`."""
    return _save(draw_score_histograms(scores, bins), path)
