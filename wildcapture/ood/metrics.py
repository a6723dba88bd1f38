"""OOD detection metrics, OOD = positive class, higher score = more OOD.

The conventions follow pytorch-ood (`pytorch_ood.utils.metrics`) and OpenOOD v1.5:

- AUROC: area under the ROC curve with OOD as the positive class.
- AUPR-IN: average precision with ID as the positive class, ranked by -score.
- AUPR-OUT: average precision with OOD as the positive class, ranked by score.
- FPR@95TPR: the fraction of ID samples flagged as OOD (score >= t) at the largest threshold t
  that flags at least 95% of the OOD samples; i.e. the FPR at the first point of the ROC
  curve whose TPR is >= 0.95. Equal scores form one threshold group, so a tie is never split.

Every value is a fraction in [0, 1]. AUPR uses sklearn's average precision (step-wise
sum), not the trapezoidal area under the precision-recall curve.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95")


def _as_scores(values: np.ndarray, split: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{split} scores must be a 1-D array (one score per image), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"empty {split} split: no {split} scores to evaluate")
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise ValueError(f"{split} scores contain {n_bad} non-finite value(s) (NaN or inf) out of {arr.size}")
    return arr


def _labels_and_scores(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (is_ood (N,) int, scores (N,) float64) for ID followed by OOD."""
    id_arr = _as_scores(id_scores, "ID")
    ood_arr = _as_scores(ood_scores, "OOD")
    is_ood = np.concatenate([np.zeros(id_arr.size, dtype=np.int64), np.ones(ood_arr.size, dtype=np.int64)])
    return is_ood, np.concatenate([id_arr, ood_arr])


def roc_points(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with OOD positive, one point per distinct score (ties grouped).

    Returns (fpr, tpr, thresholds), each of shape (K+1,) for K distinct scores: fpr[i] / tpr[i]
    are the fractions of ID / OOD samples with score >= thresholds[i]; the first point is
    (0, 0) at threshold +inf. No point is dropped, so FPR@TPR can be read off exactly.
    """
    is_ood, scores = _labels_and_scores(id_scores, ood_scores)
    return roc_curve(is_ood, scores, drop_intermediate=False)


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve, OOD positive: P(score_ood > score_id) + 0.5 P(equal), in [0, 1]."""
    is_ood, scores = _labels_and_scores(id_scores, ood_scores)
    return float(roc_auc_score(is_ood, scores))


def aupr_in(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with ID as the positive class, ranked by -score; in [0, 1]."""
    is_ood, scores = _labels_and_scores(id_scores, ood_scores)
    return float(average_precision_score(1 - is_ood, -scores))


def aupr_out(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with OOD as the positive class, ranked by score; in [0, 1]."""
    is_ood, scores = _labels_and_scores(id_scores, ood_scores)
    return float(average_precision_score(is_ood, scores))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of ID samples with score >= t, for the largest t that flags >= `tpr` of OOD.

    Same as pytorch-ood's `fpr_at_tpr` (first ROC point with TPR >= tpr). Returns a fraction
    in [0, 1]; 0 is best.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    fpr_arr, tpr_arr, _ = roc_points(id_scores, ood_scores)
    # tpr_arr is non-decreasing and ends at 1.0, so the search always succeeds
    return float(fpr_arr[int(np.searchsorted(tpr_arr, tpr, side="left"))])


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """All four metrics: {"auroc", "aupr_in", "aupr_out", "fpr95"} -> fractions in [0, 1].

    `id_scores` (N_id,) and `ood_scores` (N_ood,) are OOD scores, higher = more OOD.
    Raises ValueError naming the split if either is empty, not 1-D or has NaN/inf.
    """
    return {
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
    }
