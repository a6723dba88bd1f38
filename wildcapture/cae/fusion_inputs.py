"""The fusion detector (`wildcapture.ood.fusion`) in stages 3 and 4, fed with stage 2's features and logits.

Stage 3 fits the partner on train_id and scores val_id once (`FusionCalibration.fit`); each time it saves
best.pth it stores the detector calibrated on that epoch's val_id errors (`FusionCalibration.entry`).
Stage 4 rebuilds it from best.pth and scores the test splits (`fused_test_scores`). Heatmap files
(`inputs.*`) have no features beside them: then there is no fusion, and a note says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wildcapture.cae.checkpoint import fusion_of, sorted_scores
from wildcapture.cae.engine import ood_threshold
from wildcapture.cae.inputs import HeatmapSource
from wildcapture.detector import Detector, score_on
from wildcapture.ood.fusion import FusionDetector, ZScoreFusion, fit_partner, fusion_partners
from wildcapture.data.protocol import TRAIN_ID, VAL_ID


def _external_note(what: str) -> None:
    print(f"note: heatmaps from inputs.*: there are no stage-2 features beside them, so {what}", flush=True)


@dataclass
class FusionCalibration:
    """Stage 3's half-made fusion detector: the partner, fit on train_id, its val_id scores (N,) and the CAE's
    weight in the fused score (`fusion.weight`)."""

    partner_name: str
    partner: Detector
    val_scores: np.ndarray
    weight: float = ZScoreFusion.DEFAULT_WEIGHT

    @classmethod
    def fit(cls, name: str | None, source: HeatmapSource,
            weight: float = ZScoreFusion.DEFAULT_WEIGHT) -> "FusionCalibration | None":
        """Fit the partner `name` (`fusion.partner`) on the source's train_id features, logits and labels (and
        the classifier's head, for ViM), as stage 2 fits its baselines, and score val_id; the fused score weighs
        the CAE by `weight` (`fusion.weight`). None when `name` is None or the source has no features."""
        if name is None:
            return None
        if not source.from_stage2:
            _external_note(f"no fusion detector is fit (fusion.partner={name} is ignored)")
            return None
        train = {**source.features_and_logits(TRAIN_ID), "labels": np.asarray(source.index(TRAIN_ID).labels)}
        if "head" in getattr(fusion_partners().get(name), "fit_inputs", ()):  # ViM: the classifier's head too
            train["head"] = source.head()
        partner = fit_partner(name, train)
        return cls(name, partner, score_on(partner, source.features_and_logits(VAL_ID)), weight)

    def entry(self, val_errors: np.ndarray, accept_fraction: float) -> dict[str, Any]:
        """best.pth's `fusion` entry for the CAE whose val_id errors are `val_errors` (N,): the z-scores fit
        on them and the partner's val_id scores, the threshold accepting `accept_fraction` of the fused
        val_id scores (the rule of the CAE's own threshold, `ood_threshold`) and those scores, sorted."""
        zscore = ZScoreFusion(self.weight).fit(val_errors, self.val_scores)
        fused = zscore.score(val_errors, self.val_scores)
        return {**FusionDetector(self.partner_name, self.partner, zscore, ood_threshold(fused, accept_fraction)
                                 ).state_dict(), "val_scores": sorted_scores(fused)}


def fused_test_scores(ckpt: dict[str, Any], source: HeatmapSource, errors: dict[str, np.ndarray]
                      ) -> tuple[FusionDetector | None, dict[str, np.ndarray]]:
    """Return the fusion detector of the CAE checkpoint `ckpt` (as `load_cae` returns it) and its fused score
    of every image of each split of `errors` ({split: CAE errors (N,)}): {split: float64 (N,)}; (None, {})
    when the checkpoint has none, or the source has no features."""
    fusion = fusion_of(ckpt)
    if fusion is None:
        return None, {}
    if not source.from_stage2:
        _external_note(f"the fusion detector of {ckpt['path']} is left out")
        return None, {}
    return fusion, {split: score_on(fusion, {"cae_error": errs, **source.features_and_logits(split)})
                    for split, errs in errors.items()}
