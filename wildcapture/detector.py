"""The one OOD detector contract (pytorch-ood's shape): fit on in-distribution data, then score.

A detector declares the inputs it reads, by name, and takes them as keyword arguments:
"features" (N, D) pre-logits, "logits" (N, C), "labels" (N,) class ids, "head" the classifier's
(weight (C, D), bias (C,)), "heatmaps" (N, h, w) or (N, C, h, w), and "cae_error" (N,), the CAE's score.
`fit` reads `fit_inputs` of train_id and returns the detector; `score` reads `inputs` of any split and
returns float64 (N,), higher = more OOD.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class Detector:
    """Base of every detector: the post-hoc baselines, the CAE and the fusion of both.

    A `storable` detector's `state_dict()` holds what `from_state` needs to score again, as plain values and
    float64 tensors (loadable with `torch.load(weights_only=True)`); the restored one scores bit for bit alike.
    """

    name = "detector"
    fit_inputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("features", "logits")
    storable = False

    def fit(self, **train: Any) -> "Detector":
        """Fit on train_id's `fit_inputs`; returns self (nothing to fit by default)."""
        return self

    def score(self, **inputs: Any) -> np.ndarray:
        """OOD scores of the images whose `inputs` are given: float64 (N,), higher = more OOD."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What `from_state` needs to score again; NotImplementedError unless `storable`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be stored")

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Detector":
        """The fitted detector whose `state_dict()` was `state`."""
        raise NotImplementedError(f"{cls.__name__} cannot be stored")

    def _require_fitted(self, attr: str) -> None:
        if getattr(self, attr, None) is None:
            raise RuntimeError(f"{type(self).__name__} must be fit on train_id data before score()")


def take(data: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """{name: value} of `names` from a mapping or an object with those attributes (a stage-2 `SplitArrays`);
    KeyError naming the first one `data` lacks."""
    missing = [n for n in names if (n not in data if isinstance(data, Mapping) else not hasattr(data, n))]
    if missing:
        raise KeyError(f"the detector needs input {missing[0]!r}, which the data lacks")
    return {n: data[n] if isinstance(data, Mapping) else getattr(data, n) for n in names}


def fit_on(detector: Detector, data: Any) -> Detector:
    """`detector` fit on the `fit_inputs` it declares, taken from `data` (see `take`)."""
    return detector.fit(**take(data, detector.fit_inputs))


def score_on(detector: Detector, data: Any) -> np.ndarray:
    """`detector`'s scores of the images of `data` (see `take`): float64 (N,)."""
    return np.asarray(detector.score(**take(data, detector.inputs)), dtype=np.float64)
