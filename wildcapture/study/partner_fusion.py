"""The seed study's fusion of each variant's CAE with every partner, where stage 4 fuses it with one.

Stage 3 fuses the CAE with `fusion.partner` only. To compare partners without training one CAE per partner, the
study rebuilds each fusion from files the runs already hold, by stage 3's own rule (`wildcapture.ood.fusion`):
the partner is fit on train_id's features (`FusionCalibration.fit`, as stages 2 and 3 fit it), both scores are
z-scored on val_id (the CAE's val_id errors are the ones stage 3 keeps in best.pth), and the test splits' fused
score is 2 (w z_cae + (1 - w) z_partner) with the run's `fusion.weight` w, from stage 4's CAE errors and stage 2's baseline scores. The partners are those a
checkpoint can store (`fusion_partners()`), so a winning one can be used as `fusion.partner`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from wildcapture.cae.checkpoint import fusion_of, load_cae, val_scores_of
from wildcapture.cae.fusion_inputs import FusionCalibration
from wildcapture.cae.inputs import Stage2Heatmaps
from wildcapture.errors import DatasetError
from wildcapture.ood.fusion import ZScoreFusion, fusion_partners

# The fused scores of a partner that stage 4 also fused must agree with stage 4's to this relative tolerance
# (the z-scores' means are summed in another order: the CAE's val_id errors are stored sorted).
AGREEMENT_RTOL = 1e-9


def partner_val_scores(heatmaps: Path) -> dict[str, np.ndarray]:
    """{partner: its val_id scores (N,) float64} for every fusion partner, each fit on the train_id features and
    logits of the stage-2 run in `heatmaps` (one fit per partner, shared by every variant of that run)."""
    source = Stage2Heatmaps(heatmaps)
    return {name: np.asarray(FusionCalibration.fit(name, source).val_scores, dtype=np.float64)
            for name in fusion_partners()}


def cae_val_errors(cae_checkpoint: Path) -> tuple[np.ndarray, float]:
    """(The CAE's val_id reconstruction errors (N,) float64, ascending, as stage 3 stored them in best.pth; the
    CAE's weight in its stored fusion, `fusion.weight`: 0.5 when it has none)."""
    ckpt = load_cae(cae_checkpoint, require_complete=True)[1]
    fusion = fusion_of(ckpt)
    return val_scores_of(ckpt, "cae"), ZScoreFusion.DEFAULT_WEIGHT if fusion is None else fusion.zscore.weight


def fuse_with_partners(cae_val: np.ndarray, partner_val: Mapping[str, np.ndarray],
                       cae_test: Mapping[str, np.ndarray], partner_test: Mapping[str, Mapping[str, np.ndarray]],
                       weight: float = ZScoreFusion.DEFAULT_WEIGHT) -> dict[str, dict[str, np.ndarray]]:
    """Return {"cae+<partner>": {split: fused scores (N,) float64}} for each partner of `partner_val`, the CAE
    weighted by `weight` (stage 3's `fusion.weight` of the run).

    `cae_val`: the CAE's val_id errors (any order); `partner_val`: {partner: val_id scores}; `cae_test`: {split:
    CAE errors}; `partner_test`: {partner: {split: scores}} (stage 2's baseline scores), in the same image order
    as `cae_test`. The z-scores are fit on val_id only (`ZScoreFusion`).
    """
    fused = {}
    for name, val in partner_val.items():
        zscore = ZScoreFusion(weight).fit(np.asarray(cae_val, dtype=np.float64), val)
        fused[f"cae+{name}"] = {split: zscore.score(errors, partner_test[name][split])
                                for split, errors in cae_test.items()}
    return fused


def check_agrees(study: Mapping[str, np.ndarray], stage4: Mapping[str, np.ndarray], what: str) -> None:
    """DatasetError unless the study's fused scores ({split: (N,)}) equal stage 4's for the same partner (to
    AGREEMENT_RTOL): the two must be one rule, or the partners' rows would not be comparable."""
    for split, scores in study.items():
        if not np.allclose(scores, stage4[split], rtol=AGREEMENT_RTOL, atol=AGREEMENT_RTOL):
            worst = float(np.max(np.abs(scores - stage4[split])))
            raise DatasetError(f"{what}: the study's fused scores of split {split} differ from stage 4's by up to "
                               f"{worst:.3g}; the stage-2 baseline scores and the partner stage 3 fit disagree")
