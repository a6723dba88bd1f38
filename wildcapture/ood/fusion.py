"""Fusion of the attention score (the CAE's reconstruction error) with a post-hoc feature detector.

Each score is z-scored with its mean and standard deviation on val_id, and the fused score is
2 * (w * z_attention + (1 - w) * z_feature) (higher = more OOD; w = `fusion.weight`, 0.5 = the plain sum
z_attention + z_feature, to the last bit). Only val_id is used to fit the z-scores, so test data never shape the
detector. The feature partner is fit on train_id like stage 2's baselines.

`FusionDetector.state_dict()` is the `fusion` entry of a stage-3 `best.pth`: {"partner": name,
"partner_state": the partner's `state_dict()`, "zscore": `ZScoreFusion.state_dict()`, "threshold":
float}, plain values and tensors, so it loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .baselines import DETECTORS
from wildcapture.detector import Detector, fit_on, score_on
from wildcapture.errors import ConfigError
from .metrics import _as_scores

# A standard deviation below STD_FLOOR * max(1, |mean|) is raised to it (see ZScoreFusion.fit).
STD_FLOOR = 1e-12


def _pair(attention: np.ndarray, feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, f = _as_scores(attention, "attention"), _as_scores(feature, "feature")
    if a.shape != f.shape:
        raise ValueError(f"{a.shape[0]} attention scores but {f.shape[0]} feature scores: one of each per image")
    return a, f


class ZScoreFusion:
    """score = 2 * (w * (attention - mean_a) / std_a + (1 - w) * (feature - mean_f) / std_f), means and stds fit
    on val_id, w (`weight`, in [0, 1]) the attention's share; w = 0.5 gives the plain sum of the two z-scores.

    The stds are population stds (ddof=0). A score constant on val_id (std below
    STD_FLOOR * max(1, |mean|)) gets that floor as its std: its z is then 0 at the val_id value and
    huge elsewhere, so that score decides the fused ranking alone.
    """

    KEYS = ("attention_mean", "attention_std", "feature_mean", "feature_std")
    DEFAULT_WEIGHT = 0.5  # what a state without "attention_weight" (written before the weight existed) means

    def __init__(self, weight: float = DEFAULT_WEIGHT) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the attention's weight must be in [0, 1], got {weight}")
        self.weight = float(weight)
        self.stats: dict[str, float] | None = None

    def fit(self, val_attention: np.ndarray, val_feature: np.ndarray) -> "ZScoreFusion":
        """Fit means and stds on the val_id scores, both (N,) with N >= 1; returns self."""
        a, f = _pair(val_attention, val_feature)
        if a.size == 0:
            raise ValueError("ZScoreFusion needs at least one val_id image to fit")
        self.stats = {}
        for name, values in (("attention", a), ("feature", f)):
            mean = float(values.mean())
            self.stats[f"{name}_mean"] = mean
            self.stats[f"{name}_std"] = max(float(values.std()), STD_FLOOR * max(1.0, abs(mean)))
        return self

    def score(self, attention: np.ndarray, feature: np.ndarray) -> np.ndarray:
        """Fused scores 2 * (w * z_attention + (1 - w) * z_feature) of (N,) attention and feature scores:
        float64 (N,)."""
        if self.stats is None:
            raise RuntimeError("ZScoreFusion must be fit on val_id scores before score()")
        a, f = _pair(attention, feature)
        s, w = self.stats, self.weight
        z_a, z_f = (a - s["attention_mean"]) / s["attention_std"], (f - s["feature_mean"]) / s["feature_std"]
        return 2.0 * (w * z_a + (1.0 - w) * z_f)  # scaling by 2 and 0.5 is exact: w = 0.5 is z_a + z_f bit for bit

    def state_dict(self) -> dict[str, float]:
        """{"attention_mean", "attention_std", "feature_mean", "feature_std", "attention_weight"} as Python floats."""
        if self.stats is None:
            raise RuntimeError("ZScoreFusion must be fit before state_dict()")
        return {**self.stats, "attention_weight": self.weight}

    @classmethod
    def from_state(cls, state: dict[str, float]) -> "ZScoreFusion":
        """The fitted fusion whose `state_dict()` was `state`."""
        missing = [k for k in cls.KEYS if k not in state]
        if missing:
            raise ValueError(f"z-score state lacks {', '.join(missing)}")
        fusion = cls(float(state.get("attention_weight", cls.DEFAULT_WEIGHT)))
        fusion.stats = {k: float(state[k]) for k in cls.KEYS}
        return fusion


def fusion_partners() -> dict[str, type[Detector]]:
    """The detectors a fusion can pair the CAE with: the registered ones that can be stored in a checkpoint."""
    return {name: cls for name, cls in DETECTORS.items() if cls.storable}


def fit_partner(name: str, train: Mapping[str, Any]) -> Detector:
    """The partner `name` (a key of `fusion_partners()`), built with its defaults and fit on train_id's inputs
    (`train`: features, logits, labels by name), as stage 2 fits it."""
    partners = fusion_partners()
    if name not in partners:
        raise ValueError(f"unknown fusion partner {name!r}; choose one of {', '.join(partners)}")
    try:
        return fit_on(partners[name](), train)
    except KeyError as err:
        raise ConfigError(f"fusion.partner={name}: {err.args[0]} (stage 3 gives {', '.join(train)})") from None


@dataclass
class FusionDetector(Detector):
    """The CAE's error fused with a fitted partner by val_id z-scores, with its OOD threshold."""

    partner_name: str
    partner: Detector
    zscore: ZScoreFusion
    threshold: float  # fused score above it = OOD
    inputs = ("cae_error", "features", "logits")
    storable = True

    @property
    def name(self) -> str:
        """Its row in the OOD table, e.g. "cae+mahalanobis"."""
        return f"cae+{self.partner_name}"

    def score(self, cae_error: np.ndarray, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Fused scores of N images from their CAE errors (N,), features (N, D) and logits (N, C): float64 (N,)."""
        return self.zscore.score(cae_error, score_on(self.partner, {"features": features, "logits": logits}))

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's `fusion` entry (see the module docstring)."""
        return {"partner": self.partner_name, "partner_state": self.partner.state_dict(),
                "zscore": self.zscore.state_dict(), "threshold": float(self.threshold)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "FusionDetector":
        """The detector of a checkpoint's `fusion` entry; ValueError naming an unknown partner."""
        name, partners = state["partner"], fusion_partners()
        if name not in partners:
            raise ValueError(f"the fusion entry names partner {name!r}, not one of {', '.join(partners)}")
        return cls(name, partners[name].from_state(state["partner_state"]),
                   ZScoreFusion.from_state(state["zscore"]), float(state["threshold"]))
