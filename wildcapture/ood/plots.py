"""ROC curves and score histograms for OOD detectors, rendered off-screen (Agg canvas)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import auroc, roc_points

# detector -> (ID scores, OOD scores), or (ID scores, {OOD set name: its scores}) for several sets
Scores = Mapping[str, "tuple[np.ndarray, np.ndarray | Mapping[str, np.ndarray]]"]
TAIL_PERCENT = 0.5  # histogram_range: the central range is the 0.5..99.5 percentiles
REACH = 0.25        # ...and an end is clipped when it lies beyond a quarter of that range outside it


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no display or pyplot state involved
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _by_set(scores: Scores) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{OOD set: {detector: (ID scores, that set's scores)}}; a bare OOD array is the one set "OOD"."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, (id_s, ood) in scores.items():
        for set_name, ood_s in (ood.items() if isinstance(ood, Mapping) else (("OOD", ood),)):
            out.setdefault(set_name, {})[name] = (id_s, ood_s)
    return out


def draw_roc_curves(scores: Scores, title: str = "ROC (OOD = positive)") -> Figure:
    """Return a figure with one subplot per OOD set, each with every detector's ROC curve against ID (x: FPR on
    ID, y: TPR on OOD, the points of `roc_points`), AUROC in its legend label, plus the chance diagonal and a
    dashed TPR = 0.95 line. Higher score = more OOD.
    """
    sets = _by_set(scores)
    fig = Figure(figsize=(5.5 * len(sets), 5))
    for k, (set_name, pairs) in enumerate(sets.items()):
        ax = fig.add_subplot(1, len(sets), k + 1)
        for name, (id_s, ood_s) in pairs.items():
            fpr, tpr, _ = roc_points(id_s, ood_s)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(id_s, ood_s):.4f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (fraction of ID flagged)",
               ylabel="TPR (fraction of OOD flagged)", title=title if len(sets) == 1 else f"{title}: {set_name}")
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
    """Return a figure with one subplot per detector: density histograms of its ID scores and of each OOD set's
    on shared bins over that detector's own `histogram_range` of all its scores. Scores outside the range are
    counted in the edge bins, and the subplot says how many were (and the range's ends). Higher = more OOD.
    """
    if not scores:
        raise ValueError("draw_score_histograms: no detectors to plot")
    n = len(scores)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4 * ncols, 3 * nrows))
    for i, (name, (id_s, ood)) in enumerate(scores.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        id_s = np.asarray(id_s, dtype=np.float64)
        sets = {k: np.asarray(v, dtype=np.float64)
                for k, v in (ood.items() if isinstance(ood, Mapping) else (("OOD", ood),))}
        both = np.concatenate([id_s, *sets.values()])
        lo, hi = histogram_range(both)
        edges = np.linspace(lo, hi, bins + 1)
        ax.hist(np.clip(id_s, lo, hi), bins=edges, density=True, alpha=0.55, label=f"ID (n={id_s.size})")
        for set_name, ood_s in sets.items():
            ax.hist(np.clip(ood_s, lo, hi), bins=edges, density=True, alpha=0.55 if len(sets) == 1 else 0.9,
                    histtype="bar" if len(sets) == 1 else "step", label=f"{set_name} (n={ood_s.size})")
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
