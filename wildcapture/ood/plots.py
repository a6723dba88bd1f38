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


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no display or pyplot state involved
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_roc_curves(scores: Scores, path: str | Path, title: str = "ROC (OOD = positive)") -> Path:
    """Every detector's ROC curve (x: FPR on ID, y: TPR on OOD) in one figure, AUROC in the legend.

    `scores` maps detector name -> (id_scores, ood_scores), higher = more OOD. Returns `path`.
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
    return _save(fig, path)


def plot_score_histograms(scores: Scores, path: str | Path, bins: int = 50) -> Path:
    """One subplot per detector: density histograms of ID and OOD scores on shared bins.

    `scores` maps detector name -> (id_scores, ood_scores), higher = more OOD. Returns `path`.
    """
    if not scores:
        raise ValueError("plot_score_histograms: no detectors to plot")
    n = len(scores)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4 * ncols, 3 * nrows))
    for i, (name, (id_s, ood_s)) in enumerate(scores.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        id_s = np.asarray(id_s, dtype=np.float64)
        ood_s = np.asarray(ood_s, dtype=np.float64)
        both = np.concatenate([id_s, ood_s])
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        ax.hist(id_s, bins=edges, density=True, alpha=0.55, label=f"ID (n={id_s.size})")
        ax.hist(ood_s, bins=edges, density=True, alpha=0.55, label=f"OOD (n={ood_s.size})")
        ax.set(title=name, xlabel="OOD score (higher = more OOD)", ylabel="density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
