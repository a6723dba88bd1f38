"""The seed study's fusion with its partner and weight chosen per run on validation data.

Stage 3 fuses the CAE with one partner (`fusion.partner`) and one weight (`fusion.weight`). Here each run picks
the partner (any storable one) and the CAE's weight w in WEIGHTS for stage 3's own fused score (`ZScoreFusion(w)`:
z-scores fit on val_id) by the mean AUROC of val_id against the protocol's `val` OOD sets (OpenOOD's val_tin):
never on test_id or a test OOD set. The choice is then scored on the test splits like every other detector, and
what the runs choose is the evidence for a preset's `fusion.partner` and `fusion.weight`.

The val_id side needs each image's CAE error: best.pth keeps them sorted (for the threshold), so they are
recomputed from the val_id heatmaps by stage 4's scorer and checked against the stored ones
(`cae_val_errors_in_order`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from wildcapture.cae.checkpoint import load_cae, val_scores_of
from wildcapture.cae.engine import CAEDetector
from wildcapture.cae.inputs import Stage2Heatmaps
from wildcapture.data.protocol import VAL_ID
from wildcapture.errors import DatasetError
from wildcapture.ood.fusion import ZScoreFusion
from wildcapture.ood.metrics import auroc

WEIGHTS = tuple(i / 10 for i in range(11))  # the CAE's weight w; the partner's is 1 - w
STORED_RTOL = 1e-4  # recomputed val_id errors against best.pth's (float32 sums in another batch order)


@dataclass(frozen=True)
class Choice:
    """The partner and CAE weight a run chose, and the mean val AUROC (0-1) that chose them."""
    partner: str
    weight: float
    val_auroc: float


def cae_val_errors_in_order(cae_checkpoint: Path, heatmaps: Path) -> np.ndarray:
    """The CAE's val_id reconstruction errors (N,) float64 in val_id's image order, scored as stage 4 scores.
    DatasetError when, sorted, they differ from the ones stage 3 stored in best.pth (beyond STORED_RTOL)."""
    model, ckpt = load_cae(cae_checkpoint, require_complete=True)
    prep = ckpt["prep"]
    errors = CAEDetector(model, prep["resize"], prep["norm"]).score(Stage2Heatmaps(heatmaps).heatmaps(VAL_ID),
                                                                    "split val_id")
    stored = val_scores_of(ckpt, "cae")
    if stored.shape != errors.shape or not np.allclose(np.sort(errors), stored, rtol=STORED_RTOL, atol=1e-9):
        raise DatasetError(f"the val_id errors of {cae_checkpoint} scored from {heatmaps} differ from those it stores:"
                           " the CAE and the heatmaps are not one run's")
    return errors


def choose(cae_val: np.ndarray, partner_val: Mapping[str, np.ndarray], cae_ood: Mapping[str, np.ndarray],
           partner_ood: Mapping[str, Mapping[str, np.ndarray]]) -> Choice:
    """The (partner, weight) whose fused score best separates val_id from the val OOD sets (mean AUROC).

    `cae_val`, `partner_val[p]`: val_id scores (N,), one image order; `cae_ood`: {val set's split: CAE errors};
    `partner_ood[p]`: {val set's split: partner scores}, the same order. Ties go to the partner met first, then
    to the weight nearest 0.5 (stage 3's).
    """
    best: Choice | None = None
    for name, val in partner_val.items():
        for w in sorted(WEIGHTS, key=lambda x: abs(x - ZScoreFusion.DEFAULT_WEIGHT)):
            zscore = ZScoreFusion(w).fit(cae_val, val)
            fused_val = zscore.score(cae_val, val)
            score = float(np.mean([auroc(fused_val, zscore.score(errors, partner_ood[name][split]))
                                   for split, errors in cae_ood.items()]))
            if best is None or score > best.val_auroc:
                best = Choice(name, w, score)
    if best is None:
        raise ValueError("choose needs at least one partner")
    return best


def chosen_scores(choice: Choice, cae_val: np.ndarray, partner_val: Mapping[str, np.ndarray],
                  cae_test: Mapping[str, np.ndarray], partner_test: Mapping[str, Mapping[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
    """{split: the chosen fusion's scores (N,) float64} for every split of `cae_test` (arguments as `choose`'s)."""
    zscore = ZScoreFusion(choice.weight).fit(cae_val, partner_val[choice.partner])
    return {split: zscore.score(errors, partner_test[choice.partner][split]) for split, errors in cae_test.items()}

