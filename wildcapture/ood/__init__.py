"""OOD evaluation: metrics, post-hoc baseline detectors, the results table and plots.

Conventions: every score is higher = more OOD; metrics take OOD as the positive class.
"""
from .baselines import (
    KNN,
    MSP,
    Detector,
    Energy,
    Mahalanobis,
    MaxLogit,
    ViM,
    fit_baselines,
    score_all,
)
from .fusion import FUSION_PARTNERS, FusionDetector, ZScoreFusion, fit_partner
from .metrics import METRIC_NAMES, aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics, roc_points
from .plots import plot_roc_curves, plot_score_histograms
from .table import CONVENTION, ood_rows, read_table, to_markdown, write_table

__all__ = [
    "CONVENTION", "Detector", "Energy", "FUSION_PARTNERS", "FusionDetector", "KNN", "MSP", "Mahalanobis",
    "MaxLogit", "METRIC_NAMES", "ViM", "ZScoreFusion", "aupr_in", "aupr_out", "auroc", "fit_baselines",
    "fit_partner", "fpr_at_tpr", "ood_metrics", "ood_rows", "plot_roc_curves", "plot_score_histograms",
    "read_table", "roc_points", "score_all", "to_markdown", "write_table",
]
