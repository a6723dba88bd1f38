"""Post-hoc OOD detectors on a trained classifier's pre-logit features and logits, and their registry.

Each is a `wildcapture.detector.Detector`: `fit(features, logits, labels)` on train_id (ViM also
takes the classifier's `head`), then `score(features, logits)`: float64 (N,), higher = more OOD; arrays
are converted to float64. All are `storable`, so each can be the fusion's partner (ViM fits on the classifier's
head too, which stage 2 stores beside the features). Stage 2 fits and scores every detector of DETECTORS: a new one
is a class and a line there.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from wildcapture.detector import Detector, fit_on, score_on
from wildcapture.errors import ConfigError

# Upper bound on the float64 entries of one KNN similarity block (2**25 -> 256 MiB).
_BLOCK_ENTRIES = 2**25


def _as_2d(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_pair(features: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = _as_2d("features", features)
    logs = _as_2d("logits", logits)
    if feats.shape[0] != logs.shape[0]:
        raise ValueError(f"features has {feats.shape[0]} rows but logits has {logs.shape[0]}")
    return feats, logs


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(logits))) of an (N, C) array, computed stably; shape (N,)."""
    m = logits.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]


FIT_ROWS = 8192  # rows of features converted to float64 at a time by the fits that stream


def _row_chunks(features: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (row slice, float64 rows) of a 2-D array, FIT_ROWS at a time; ValueError for an empty array or a
    non-finite value."""
    if features.shape[0] == 0:
        raise ValueError("features is empty (0 rows)")
    for start in range(0, features.shape[0], FIT_ROWS):
        rows = slice(start, start + FIT_ROWS)
        chunk = _as_2d("features", features[rows])
        yield rows, chunk


def _covariance(centered: np.ndarray) -> np.ndarray:
    """Empirical (1/N, maximum-likelihood) covariance of already-centred rows, (D, D)."""
    return centered.T @ centered / centered.shape[0]


class _Stateless(Detector):
    """A detector of the logits alone: nothing to fit, nothing to store."""

    storable = True

    def fit(self, features: np.ndarray | None = None, logits: np.ndarray | None = None,
            labels: np.ndarray | None = None) -> "Detector":
        """Nothing to fit; returns self."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Detector":
        return cls()


class MSP(_Stateless):
    """Maximum softmax probability (Hendrycks & Gimpel 2017): score = -max_c softmax(logits)_c."""

    name = "msp"

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        _, logs = _check_pair(features, logits)
        return -np.exp(logs.max(axis=1) - logsumexp(logs))


class MaxLogit(_Stateless):
    """Maximum logit (Hendrycks et al. 2022): score = -max_c logits_c."""

    name = "maxlogit"

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        _, logs = _check_pair(features, logits)
        return -logs.max(axis=1)


class Energy(_Stateless):
    """Energy score at temperature 1 (Liu et al. 2020): score = -logsumexp(logits)."""

    name = "energy"

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        _, logs = _check_pair(features, logits)
        return -logsumexp(logs)


class Mahalanobis(Detector):
    """Class-conditional Gaussians with one tied covariance (Lee et al. 2018), on features.

    fit: class means mu_c and the pooled within-class empirical covariance S (features centred
    on their class mean, divided by N); the precision is pinv(S).
    score: min_c (x - mu_c)^T pinv(S) (x - mu_c), a squared distance in feature units^2.
    """

    name = "mahalanobis"
    fit_inputs = ("features", "logits", "labels")
    storable = True

    def __init__(self) -> None:
        self.classes_: np.ndarray | None = None
        self.means_: np.ndarray | None = None
        self.precision_: np.ndarray | None = None
        self._whiten: np.ndarray | None = None

    def fit(self, features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> "Mahalanobis":
        """Fit on train_id features (N, D) (read FIT_ROWS rows at a time, so a memory-mapped array is never
        loaded whole) and labels (N,); returns self."""
        if labels is None:
            raise ValueError("Mahalanobis needs the train_id class labels to fit class means")
        labels = np.asarray(labels).reshape(-1)
        if np.ndim(features) != 2 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but features has shape {np.shape(features)}")
        self.classes_, inverse = np.unique(labels, return_inverse=True)
        sums = np.zeros((len(self.classes_), features.shape[1]))
        for rows, chunk in _row_chunks(features):
            order = np.argsort(inverse[rows], kind="stable")
            ids = inverse[rows][order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            sums[ids[starts]] += np.add.reduceat(chunk[order], starts, axis=0)
        self.means_ = sums / np.bincount(inverse)[:, None]
        cov = np.zeros((features.shape[1], features.shape[1]))
        for rows, chunk in _row_chunks(features):
            centered = chunk - self.means_[inverse[rows]]
            cov += centered.T @ centered
        cov /= features.shape[0]
        # pinv through the eigen-decomposition; eigenvalues below numpy's rank tolerance
        # (including tiny negative round-off) count as zero, as np.linalg.pinv would drop them.
        eigvals, eigvecs = np.linalg.eigh(cov)
        tol = max(eigvals.max(), 0.0) * cov.shape[0] * np.finfo(np.float64).eps
        keep = eigvals > tol
        self._whiten = np.ascontiguousarray(eigvecs[:, keep] / np.sqrt(eigvals[keep]))
        self.precision_ = self._whiten @ self._whiten.T
        return self

    def state_dict(self) -> dict[str, Any]:
        """{"classes": list of class ids, "means": (n_classes, D) and "whiten": (D, rank) float64 tensors}.
        The whitening matrix W (precision = W W^T) is stored rather than the precision, because scores are
        computed through it: restored, they are identical."""
        self._require_fitted("_whiten")
        return {"classes": self.classes_.tolist(), "means": torch.from_numpy(self.means_.copy()),
                "whiten": torch.from_numpy(self._whiten.copy())}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Mahalanobis":
        det = cls()
        det.classes_ = np.asarray(state["classes"])
        det.means_ = torch.as_tensor(state["means"], dtype=torch.float64).numpy()
        det._whiten = torch.as_tensor(state["whiten"], dtype=torch.float64).numpy()
        if det.means_.ndim != 2 or det._whiten.ndim != 2 or det._whiten.shape[0] != det.means_.shape[1]:
            raise ValueError(f"Mahalanobis state: means {tuple(det.means_.shape)} and whiten "
                             f"{tuple(det._whiten.shape)} do not fit together (expected (C, D) and (D, r))")
        det.precision_ = det._whiten @ det._whiten.T
        return det

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each class mean, shape (N, n_classes)."""
        self._require_fitted("_whiten")
        feats = _as_2d("features", features)
        if feats.shape[1] != self.means_.shape[1]:
            raise ValueError(f"features have dim {feats.shape[1]}, Mahalanobis was fit on dim {self.means_.shape[1]}")
        z = feats @ self._whiten
        zm = self.means_ @ self._whiten
        return np.stack([((z - m) ** 2).sum(axis=1) for m in zm], axis=1)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        _check_pair(features, logits)
        return self.distances(features).min(axis=1)


class RMDS(Detector):
    """Relative Mahalanobis distance score (Ren et al. 2021), as OpenOOD v1.5's `rmds`, on features.

    fit: the class-conditional Gaussians of `Mahalanobis` (class means mu_c, pooled within-class covariance S
    divided by N, precision pinv(S)), and a background Gaussian fit the same way with every train_id feature
    in one class, labels ignored (mean mu_0, covariance S_0 of all features divided by N, precision pinv(S_0)).
    score: min_c [MD_c(x) - MD_0(x)] with the squared distances MD_c(x) = (x - mu_c)^T pinv(S) (x - mu_c) and
    MD_0(x) = (x - mu_0)^T pinv(S_0) (x - mu_0): OpenOOD's confidence max_c -(MD_c - MD_0), negated.
    OpenOOD takes the same 1/N covariances (sklearn's EmpiricalCovariance) and pseudo-inverses (its pinvh
    drops the eigenvalues below D * eps * the largest, as here), but in float32; here all is float64.
    """

    name = "rmds"
    fit_inputs = ("features", "logits", "labels")
    storable = True

    def __init__(self) -> None:
        self.classes: Mahalanobis | None = None  # the class-conditional Gaussians
        self.background: Mahalanobis | None = None  # one Gaussian of all train_id features

    def fit(self, features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> "RMDS":
        """Fit on train_id features (N, D) (streamed as `Mahalanobis.fit` streams them) and labels (N,);
        returns self."""
        if labels is None:
            raise ValueError("RMDS needs the train_id class labels to fit class means")
        self.classes = Mahalanobis().fit(features, logits, labels)
        self.background = Mahalanobis().fit(features, logits, np.zeros(np.shape(features)[0], dtype=np.int64))
        return self

    def state_dict(self) -> dict[str, Any]:
        """{"classes": the class-conditional `Mahalanobis.state_dict()`, "background": the background one's
        (one class, 0)}."""
        self._require_fitted("background")
        return {"classes": self.classes.state_dict(), "background": self.background.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RMDS":
        det = cls()
        det.classes = Mahalanobis.from_state(state["classes"])
        det.background = Mahalanobis.from_state(state["background"])
        dim, background = det.classes.means_.shape[1], det.background.means_.shape
        if background != (1, dim):
            raise ValueError(f"RMDS state: the background mean has shape {background}, the class means dim {dim} "
                             f"(expected (1, {dim}))")
        return det

    def relative_distances(self, features: np.ndarray) -> np.ndarray:
        """MD_c(x) - MD_0(x) of each row to each class, shape (N, n_classes)."""
        self._require_fitted("background")
        return self.classes.distances(features) - self.background.distances(features)  # (N, C) - (N, 1)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        _check_pair(features, logits)
        return self.relative_distances(features).min(axis=1)


class KNN(Detector):
    """Deep nearest neighbours (Sun et al. 2022) on L2-normalised features.

    score: Euclidean distance from the normalised feature to its k-th nearest normalised
    train feature, in [0, 2]. k is capped at the number of train features. The search runs
    in float64 torch, in blocks of queries, on `device` ("cpu" or e.g. "cuda"). Storable: its state is
    k and the normalised train features.
    """

    name = "knn"
    fit_inputs = ("features", "logits", "labels")
    storable = True

    def __init__(self, k: int = 50, device: str | torch.device = "cpu",
                 block_entries: int = _BLOCK_ENTRIES) -> None:
        if k < 1:
            raise ValueError(f"KNN k must be >= 1, got {k}")
        self.k = int(k)
        self.device = torch.device(device)
        self.block_entries = int(block_entries)
        self.bank_: torch.Tensor | None = None
        self.k_: int | None = None

    def _normalised(self, feats: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(feats).to(self.device, torch.float64)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def fit(self, features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> "KNN":
        self.bank_ = self._normalised(_as_2d("features", features))
        self.k_ = min(self.k, self.bank_.shape[0])
        return self

    def state_dict(self) -> dict[str, Any]:
        """{"k": the k asked for (int), "bank": the normalised train features, a (N, D) float64 CPU tensor}.
        The bank is the whole of train_id: N * D * 8 bytes. `from_state` searches on the CPU: its scores are
        the fitted detector's bit for bit when that one searched on the CPU too, else up to float64 rounding."""
        self._require_fitted("bank_")
        return {"k": self.k, "bank": self.bank_.detach().to("cpu", copy=True)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "KNN":
        det = cls(k=int(state["k"]))
        bank = torch.as_tensor(state["bank"], dtype=torch.float64)
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"KNN state: the bank must be a non-empty (N, D) array, got {tuple(bank.shape)}")
        det.bank_, det.k_ = bank, min(det.k, bank.shape[0])
        return det

    @torch.no_grad()
    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        self._require_fitted("bank_")
        feats, _ = _check_pair(features, logits)
        if feats.shape[1] != self.bank_.shape[1]:
            raise ValueError(f"features have dim {feats.shape[1]}, the fitted KNN bank has {self.bank_.shape[1]}")
        rows = max(1, self.block_entries // self.bank_.shape[0])
        out = []
        for start in range(0, feats.shape[0], rows):
            sims = self._normalised(feats[start:start + rows]) @ self.bank_.T
            # k-th largest cosine similarity = k-th nearest neighbour on the unit sphere
            kth = sims.topk(self.k_, dim=1).values[:, -1]
            out.append((2.0 - 2.0 * kth).clamp_min(0.0).sqrt().cpu())
        return torch.cat(out).numpy().astype(np.float64)


class ViM(Detector):
    """Virtual-logit matching (Wang et al. 2022), as in the official haoqiwang/vim code.

    With head W (C, D), b (C,): origin u = -pinv(W) b; the principal subspace is spanned by the
    top-`dim` eigenvectors of the empirical covariance of (train features - u), NS by the rest;
    vlogit(x) = ||(x - u) NS||; alpha = mean(max train logit) / mean(train vlogit).
    score = alpha * vlogit - logsumexp(logits), i.e. the official energy - vlogit, negated.
    """

    name = "vim"
    fit_inputs = ("features", "logits", "labels", "head")
    storable = True

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.head_weight: np.ndarray | None = None
        self.origin_: np.ndarray | None = None
        self.dim_: int | None = None
        self.residual_basis_: np.ndarray | None = None
        self.alpha_: float | None = None

    @staticmethod
    def default_dim(feature_dim: int) -> int:
        """Official choice: 1000 if D >= 2048, 512 if D >= 768, else D // 2."""
        if feature_dim >= 2048:
            return 1000
        if feature_dim >= 768:
            return 512
        return feature_dim // 2

    def _check_features(self, feats: np.ndarray) -> None:
        if feats.shape[1] != self.head_weight.shape[1]:
            raise ValueError(f"features have dim {feats.shape[1]} but head_weight expects "
                             f"{self.head_weight.shape[1]}")

    def vlogit(self, features: np.ndarray) -> np.ndarray:
        """Norm of each (x - u) in the residual (non-principal) subspace, shape (N,), unscaled."""
        self._require_fitted("residual_basis_")
        feats = _as_2d("features", features)
        self._check_features(feats)
        return np.linalg.norm((feats - self.origin_) @ self.residual_basis_, axis=1)

    def _set_head(self, head: tuple[np.ndarray, np.ndarray]) -> None:
        self.head_weight = _as_2d("head_weight", head[0])
        bias = np.asarray(head[1], dtype=np.float64).reshape(-1)
        if bias.shape[0] != self.head_weight.shape[0]:
            raise ValueError(f"head_bias has {bias.shape[0]} entries, head_weight has "
                             f"{self.head_weight.shape[0]} rows (classes)")
        self.origin_ = -np.linalg.pinv(self.head_weight) @ bias

    def fit(self, features: np.ndarray, logits: np.ndarray, labels: np.ndarray,
            head: tuple[np.ndarray, np.ndarray]) -> "ViM":
        """Fit on train_id features (N, D) and logits (N, C) for the classifier `head` (weight (C, D), bias (C,))."""
        self._set_head(head)
        feats, logs = _check_pair(features, logits)
        self._check_features(feats)
        d = feats.shape[1]
        dim = self.default_dim(d) if self.dim is None else int(self.dim)
        if not 0 <= dim < d:
            raise ValueError(f"ViM dim must be in [0, {d}) for {d}-dim features, got {dim}")
        eigvals, eigvecs = np.linalg.eigh(_covariance(feats - self.origin_))
        order = np.argsort(-eigvals, kind="stable")
        self.dim_ = dim
        self.residual_basis_ = np.ascontiguousarray(eigvecs[:, order[dim:]])
        mean_vlogit = float(self.vlogit(feats).mean())
        if not mean_vlogit > 0.0:
            raise ValueError(f"ViM: train features have no component outside the {dim}-dim principal "
                             f"subspace (N={feats.shape[0]}, D={d}); lower vim_dim")
        self.alpha_ = float(logs.max(axis=1).mean()) / mean_vlogit
        return self

    def state_dict(self) -> dict[str, Any]:
        """{"dim": the principal subspace's dimension (int), "alpha": float, and float64 tensors "head_weight"
        (C, D), "origin" (D,) and "residual_basis" (D, D - dim)}: the restored detector scores bit for bit alike."""
        self._require_fitted("alpha_")
        return {"dim": self.dim_, "alpha": self.alpha_, "head_weight": torch.from_numpy(self.head_weight.copy()),
                "origin": torch.from_numpy(self.origin_.copy()),
                "residual_basis": torch.from_numpy(self.residual_basis_.copy())}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ViM":
        det = cls(dim=int(state["dim"]))
        det.dim_, det.alpha_ = int(state["dim"]), float(state["alpha"])
        det.head_weight, det.origin_, det.residual_basis_ = (
            torch.as_tensor(state[k], dtype=torch.float64).numpy() for k in ("head_weight", "origin", "residual_basis"))
        d = det.head_weight.shape[1] if det.head_weight.ndim == 2 else -1
        if det.origin_.shape != (d,) or det.residual_basis_.shape != (d, d - det.dim_):
            raise ValueError(f"ViM state: head_weight {tuple(det.head_weight.shape)}, origin {det.origin_.shape} and "
                             f"residual_basis {det.residual_basis_.shape} do not fit dim {det.dim_} together")
        return det

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        self._require_fitted("alpha_")
        feats, logs = _check_pair(features, logits)
        return self.alpha_ * self.vlogit(feats) - logsumexp(logs)


# The detectors stage 2 fits on train_id and scores on the test splits, in the OOD table's order.
DETECTORS: dict[str, type[Detector]] = {"msp": MSP, "maxlogit": MaxLogit, "energy": Energy,
                                        "mahalanobis": Mahalanobis, "rmds": RMDS, "knn": KNN, "vim": ViM}


def fit_detectors(train: Mapping[str, Any], options: Mapping[str, dict[str, Any]] | None = None
                  ) -> dict[str, Detector]:
    """Every detector of DETECTORS, built with its `options` (name -> constructor keywords, e.g.
    {"knn": {"k": 50, "device": "cuda"}}) and fit on `train` (train_id's inputs by name); returns
    {name: fitted detector}. A detector whose fit input is None in `train`, or is a `head` it lacks (ViM without
    the classifier's head), is left out; ConfigError for any other input `train` lacks."""
    options = options or {}
    detectors = {name: cls(**options.get(name, {})) for name, cls in DETECTORS.items()}
    for name, det in detectors.items():
        missing = [k for k in det.fit_inputs if k not in train and k != "head"]
        if missing:
            raise ConfigError(f"detector {name} fits on {missing[0]!r}, which stage 2 does not give (it gives "
                              f"{', '.join(train)}): fix its fit_inputs")
    return {name: fit_on(det, train) for name, det in detectors.items()
            if all(train.get(k) is not None for k in det.fit_inputs)}


def score_all(detectors: Mapping[str, Detector], split: Any) -> dict[str, np.ndarray]:
    """Score one split (its inputs by name, e.g. a stage-2 `SplitArrays`) with every detector: {name: float64
    scores (N,)}, higher = more OOD."""
    return {name: score_on(det, split) for name, det in detectors.items()}

