"""Paired bootstrap of AUROC: one set of resamples shared by every detector, and the AUROC of every
resample at once.

A resample of n items drawn with replacement is stored as counts: how often each item was drawn.
The AUROC of a resample is then the Mann-Whitney U statistic with those multiplicities,

    AUROC = sum_j c_ood[j] * (#{id < s_ood[j]} + 0.5 #{id == s_ood[j]}) / (n_id * n_ood),

where the ID counts `#{...}` are weighted by c_id: exactly `metrics.auroc` of the resampled arrays
(ties count one half), computed from one sort of the ID scores and cumulative sums over the
resamples, with no Python loop over resamples or images.
"""
from __future__ import annotations

import numpy as np

from .metrics import _as_scores

_BLOCK_CELLS = 1 << 24  # resamples are processed in blocks of about this many (resample, item) cells


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return (resamples, n) int64: row b holds how often each of the n items is drawn in resample b,
    n draws with replacement (each row sums to n)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"resample_counts needs n >= 1 and resamples >= 1, got n={n}, resamples={resamples}")
    drawn = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * n).reshape(resamples, n)


def resampled_auroc(id_scores: np.ndarray, ood_scores: np.ndarray, id_counts: np.ndarray,
                    ood_counts: np.ndarray) -> np.ndarray:
    """Return (B,) float64: the AUROC (OOD positive, ties one half) of each resample.

    `id_scores` (n_id,) and `ood_scores` (n_ood,) are OOD scores, higher = more OOD; `id_counts`
    (B, n_id) and `ood_counts` (B, n_ood) are `resample_counts` of each split. Counts of all ones
    give the full-sample AUROC.
    """
    id_arr, ood_arr = _as_scores(id_scores, "ID"), _as_scores(ood_scores, "OOD")
    id_counts, ood_counts = np.asarray(id_counts), np.asarray(ood_counts)
    if id_counts.ndim != 2 or ood_counts.ndim != 2 or id_counts.shape[1] != id_arr.size \
            or ood_counts.shape[1] != ood_arr.size or id_counts.shape[0] != ood_counts.shape[0]:
        raise ValueError(f"counts of shapes {id_counts.shape} and {ood_counts.shape} do not fit "
                         f"{id_arr.size} ID and {ood_arr.size} OOD scores")
    order = np.argsort(id_arr, kind="stable")
    below = np.searchsorted(id_arr[order], ood_arr, side="left")  # ID scores < each OOD score
    up_to = np.searchsorted(id_arr[order], ood_arr, side="right")  # ID scores <= each OOD score
    block = max(1, _BLOCK_CELLS // (id_arr.size + ood_arr.size))
    out = np.empty(id_counts.shape[0])
    for start in range(0, id_counts.shape[0], block):
        rows = slice(start, start + block)
        cumulative = np.zeros((out[rows].size, id_arr.size + 1))
        np.cumsum(id_counts[rows][:, order], axis=1, out=cumulative[:, 1:])
        wins = 0.5 * (cumulative[:, below] + cumulative[:, up_to])  # less + half of equal
        out[rows] = np.einsum("bj,bj->b", ood_counts[rows], wins)
    return out / (id_arr.size * ood_arr.size)
