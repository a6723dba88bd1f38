"""The fusion detector (`wildcapture.ood.fusion`) in stages 3 and 4, fed with stage 2's features and logits.

Stage 3 fits the partner `fusion.partner` on train_id and scores val_id once
(`FusionCalibration.from_stage2`); each time it saves best.pth, it fits the z-scores on that epoch's
val_id reconstruction errors and the partner's val_id scores and stores the detector with its threshold
(`FusionCalibration.entry`). Stage 4 rebuilds it from best.pth and scores the test splits
(`fused_test_scores`). Heatmaps given as `inputs.*` files have no stage-2 features beside them: then
there is no fusion (a note says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wildcapture.cae.checkpoint import fusion_of, sorted_scores
from wildcapture.cae.engine import ood_threshold
from wildcapture.heatmap_store import read_array, read_index
from wildcapture.ood.baselines import Detector
from wildcapture.ood.fusion import FusionDetector, ZScoreFusion, fit_partner
from wildcapture.paths import heatmaps_dir


def partner_inputs(cfg: dict[str, Any], meta: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return stage 2's (features (N, D), logits (N, C)) float32 of `split` (digests checked)."""
    folder = heatmaps_dir(cfg)
    return read_array(folder, meta, split, "features"), read_array(folder, meta, split, "logits")


def _external_note(what: str) -> None:
    print(f"note: heatmaps from inputs.*: there are no stage-2 features beside them, so {what}", flush=True)


@dataclass
class FusionCalibration:
    """Stage 3's half-made fusion detector: the partner, fit on train_id, and its val_id scores (N,)."""

    partner_name: str
    partner: Detector
    val_scores: np.ndarray

    @classmethod
    def from_stage2(cls, cfg: dict[str, Any], meta: dict[str, Any] | None) -> "FusionCalibration | None":
        """Fit `fusion.partner` on stage 2's train_id features, logits and labels, as stage 2 fits its
        baselines, and score val_id; None when `fusion.partner` is null or `meta` is None (external heatmaps)."""
        name = cfg["fusion"]["partner"]
        if name is None:
            return None
        if meta is None:
            _external_note(f"no fusion detector is fit (fusion.partner={name} is ignored)")
            return None
        labels = np.asarray(read_index(heatmaps_dir(cfg), meta, "train_id").labels)
        partner = fit_partner(name, *partner_inputs(cfg, meta, "train_id"), labels)
        return cls(name, partner, partner.score(*partner_inputs(cfg, meta, "val_id")))

    def entry(self, val_errors: np.ndarray, accept_fraction: float) -> dict[str, Any]:
        """best.pth's `fusion` entry for the CAE whose val_id errors are `val_errors` (N,): the z-scores fit
        on them and the partner's val_id scores, the threshold accepting `accept_fraction` of the fused
        val_id scores (the rule of the CAE's own threshold, `ood_threshold`) and those scores, sorted."""
        zscore = ZScoreFusion().fit(val_errors, self.val_scores)
        fused = zscore.score(val_errors, self.val_scores)
        return {**FusionDetector(self.partner_name, self.partner, zscore, ood_threshold(fused, accept_fraction)
                                 ).state_dict(), "val_scores": sorted_scores(fused)}


def fused_test_scores(cfg: dict[str, Any], ckpt: dict[str, Any], meta: dict[str, Any] | None,
                      errors: dict[str, np.ndarray]) -> tuple[FusionDetector | None, dict[str, np.ndarray]]:
    """Return the fusion detector of the CAE checkpoint `ckpt` (as `load_cae` returns it) and its fused score
    of every image of each split of `errors` ({split: CAE errors (N,)}): {split: float64 (N,)}; (None, {})
    when the checkpoint has none, or the test heatmaps are external files (`meta` None)."""
    fusion = fusion_of(ckpt)
    if fusion is None:
        return None, {}
    if meta is None:
        _external_note(f"the fusion detector of {ckpt['path']} is left out")
        return None, {}
    return fusion, {split: fusion.score(errs, *partner_inputs(cfg, meta, split)) for split, errs in errors.items()}
