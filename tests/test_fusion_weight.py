"""The seed study's fusion chosen on validation data (`wildcapture.study.fusion_weight`): the choice on a case with
a known answer, and val_id's errors in image order."""
import numpy as np
import pytest
import torch

from wildcapture.cae.checkpoint import load_cae
from wildcapture.cae.engine import CAEDetector
from wildcapture.cae.inputs import Stage2Heatmaps
from wildcapture.ood.fusion import ZScoreFusion
from wildcapture.study.fusion_weight import WEIGHTS, Choice, cae_val_errors_in_order, choose, chosen_scores


def test_choice_is_the_partner_and_weight_best_on_val():
    rng = np.random.default_rng(0)
    n = 200
    cae_val, cae_ood = rng.normal(0, 1, n), rng.normal(0.3, 1, n)  # the CAE separates a little
    good_val, good_ood = rng.normal(0, 1, n), rng.normal(3.0, 1, n)  # "good" separates almost perfectly
    noise_val, noise_ood = rng.normal(0, 1, n), rng.normal(0, 1, n)  # "noise" not at all
    partner_val = {"noise": noise_val, "good": good_val}
    partner_ood = {"noise": {"ood_v": noise_ood}, "good": {"ood_v": good_ood}}
    choice = choose(cae_val, partner_val, {"ood_v": cae_ood}, partner_ood)
    assert choice.partner == "good" and choice.weight < 0.5 and choice.weight in WEIGHTS
    # its val AUROC is the best of every (partner, weight), recomputed by brute force
    from wildcapture.ood.metrics import auroc
    fits = {(p, w): ZScoreFusion(w).fit(cae_val, partner_val[p]) for p in partner_val for w in WEIGHTS}
    every = [auroc(z.score(cae_val, partner_val[p]), z.score(cae_ood, partner_ood[p]["ood_v"]))
             for (p, w), z in fits.items()]
    assert choice.val_auroc == pytest.approx(max(every), abs=1e-12)
    scores = chosen_scores(choice, cae_val, partner_val, {"ood_v": cae_ood}, partner_ood)
    assert auroc(fits["good", choice.weight].score(cae_val, good_val), scores["ood_v"]) == pytest.approx(
        choice.val_auroc, abs=1e-12)


def test_a_tie_keeps_stage_3s_equal_weights():
    same = np.array([0.0, 1.0, 2.0, 3.0])
    choice = choose(same, {"p": same}, {"ood_v": same + 10}, {"p": {"ood_v": same + 10}})  # every weight: AUROC 1
    assert choice == Choice("p", 0.5, 1.0)


def test_val_id_errors_come_in_image_order(tiny_heatmaps, tiny_cae):
    checkpoint, heatmaps = tiny_cae / "cae" / "best.pth", tiny_heatmaps / "heatmaps"
    errors = cae_val_errors_in_order(checkpoint, heatmaps)
    model, ckpt = load_cae(checkpoint)
    maps = np.asarray(Stage2Heatmaps(heatmaps).heatmaps("val_id")[:], dtype=np.float32)
    detector = CAEDetector(model, ckpt["prep"]["resize"], ckpt["prep"]["norm"])
    model.eval()
    with torch.no_grad():  # one image at a time: an independent batching of the same rule
        expected = [float(((model(x) - x) ** 2).mean()) for x in (detector.prepare(m[None]) for m in maps)]
    np.testing.assert_allclose(errors, expected, rtol=1e-5)
    assert not np.all(np.diff(errors) >= 0)  # in image order, not the sorted order best.pth stores
