"""The fusion detector's parts: z-scores against hand values, and partners that survive a checkpoint."""
import math

import numpy as np
import pytest
import torch

from wildcapture.errors import ConfigError
from wildcapture.ood.baselines import DETECTORS, Mahalanobis, ViM, fit_detectors
from wildcapture.ood.fusion import FusionDetector, ZScoreFusion, fit_partner, fusion_partners


def _features(rank_deficient: bool = False, per_class: int = 12):
    rng = np.random.default_rng(7)
    labels = np.repeat([2, 5, 9], per_class)
    feats = rng.normal(size=(3 * per_class, 6)) + labels[:, None] * 0.5
    if rank_deficient:  # a copied column: the covariance is singular and the pseudo-inverse drops a direction
        feats[:, 5] = feats[:, 0]
    logits = rng.normal(size=(3 * per_class, 3)) * 3
    return feats, logits, labels


def _reload(obj, tmp_path):
    """`obj` after a trip through a checkpoint file read as the stages read theirs (weights_only=True)."""
    torch.save({"entry": obj}, tmp_path / "state.pth")
    return torch.load(tmp_path / "state.pth", map_location="cpu", weights_only=True)["entry"]


def test_zscore_fusion_hand_values():
    # attention 1..4: mean 2.5, population std sqrt(1.25); feature 10, 10, 20, 20: mean 15, std 5
    fusion = ZScoreFusion().fit([1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 20.0, 20.0])
    assert fusion.state_dict() == pytest.approx({"attention_mean": 2.5, "attention_std": math.sqrt(1.25),
                                                 "feature_mean": 15.0, "feature_std": 5.0, "attention_weight": 0.5})
    # (2.5 - 2.5)/s_a + (20 - 15)/5 = 1;  (5 - 2.5)/sqrt(1.25) + (5 - 15)/5 = sqrt(5) - 2
    scores = fusion.score(np.array([2.5, 5.0]), np.array([20.0, 5.0]))
    np.testing.assert_allclose(scores, [1.0, math.sqrt(5) - 2], rtol=1e-14)
    assert scores.dtype == np.float64 and scores.shape == (2,)


def test_the_weight_shares_the_fused_score():
    # val: attention 1, 3 (mean 2, std 1); feature -1, 1 (mean 0, std 1). Image: z_attention 2, z_feature -1
    val = ([1.0, 3.0], [-1.0, 1.0])
    image = (np.array([4.0]), np.array([-1.0]))
    for weight, expected in ((0.5, 1.0), (0.4, 2 * (0.4 * 2 - 0.6)), (1.0, 4.0), (0.0, -2.0)):
        fusion = ZScoreFusion(weight).fit(*val)
        np.testing.assert_allclose(fusion.score(*image), [expected], rtol=1e-14)
        assert ZScoreFusion.from_state(fusion.state_dict()).score(*image) == fusion.score(*image)
    rng = np.random.default_rng(0)
    a, f = rng.normal(size=50), rng.normal(size=50)
    plain = ZScoreFusion().fit(a, f)
    stats = plain.stats
    sum_of_z = (a - stats["attention_mean"]) / stats["attention_std"] + (f - stats["feature_mean"]) / stats["feature_std"]
    np.testing.assert_array_equal(plain.score(a, f), sum_of_z)  # 0.5: the plain sum, bit for bit
    old = {k: v for k, v in plain.state_dict().items() if k != "attention_weight"}  # a checkpoint from before
    assert ZScoreFusion.from_state(old).weight == 0.5
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\], got 1.5"):
        ZScoreFusion(1.5)


def test_a_constant_val_score_gets_the_std_floor():
    # attention constant 3 on val_id: std = 1e-12 * max(1, 3); feature constant 0: std = 1e-12
    fusion = ZScoreFusion().fit([3.0, 3.0, 3.0], [0.0, 0.0, 0.0])
    assert fusion.state_dict()["attention_std"] == pytest.approx(3e-12)
    assert fusion.state_dict()["feature_std"] == pytest.approx(1e-12)
    scores = fusion.score([3.0, 3.0 + 3e-6], [0.0, 0.0])
    assert scores[0] == 0.0 and scores[1] == pytest.approx(1e6, rel=1e-6)  # finite: the floor, not 0, divides


def test_zscore_fusion_refuses_mismatched_or_unfitted_input():
    with pytest.raises(ValueError, match="3 attention scores but 2 feature scores"):
        ZScoreFusion().fit([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        ZScoreFusion().fit([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(RuntimeError, match="fit"):
        ZScoreFusion().score([1.0], [1.0])
    with pytest.raises(ValueError, match="feature_std"):
        ZScoreFusion.from_state({"attention_mean": 0.0, "attention_std": 1.0, "feature_mean": 0.0})


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_mahalanobis_state_round_trip_gives_identical_scores(tmp_path, rank_deficient):
    feats, logits, labels = _features(rank_deficient)
    det = Mahalanobis().fit(feats, logits, labels)
    state = _reload(det.state_dict(), tmp_path)
    assert state["classes"] == [2, 5, 9] and state["means"].dtype == torch.float64
    again = Mahalanobis.from_state(state)
    queries = np.random.default_rng(3).normal(size=(10, 6)) * 2
    assert np.array_equal(again.score(queries, logits[:10]), det.score(queries, logits[:10]))
    np.testing.assert_array_equal(again.precision_, det.precision_)
    with pytest.raises(ValueError, match="do not fit together"):
        Mahalanobis.from_state({**state, "whiten": state["whiten"][:4]})


def test_every_partner_is_fit_as_stage_2_fits_its_baseline_and_survives_a_checkpoint(tmp_path):
    feats, logits, labels = _features(per_class=24)  # 72 images: KNN's default k=50 is not capped
    head = (np.random.default_rng(5).normal(size=(3, 6)), np.array([0.1, -0.2, 0.3]))
    train = {"features": feats, "logits": logits, "labels": labels, "head": head}
    baselines = fit_detectors(train)  # stage 2's defaults: a partner is built with its defaults too
    queries, query_logits = feats[::3] + 0.1, logits[::3] - 0.2
    # every registered feature detector (ViM fits on the classifier's head, which stage 2 stores)
    assert list(fusion_partners()) == list(DETECTORS) == ["msp", "maxlogit", "energy", "mahalanobis", "rmds", "knn",
                                                          "vim"]
    for name in fusion_partners():
        partner = fit_partner(name, train)
        expected = baselines[name].score(queries, query_logits)
        assert np.array_equal(partner.score(queries, query_logits), expected), name
        restored = fusion_partners()[name].from_state(_reload(partner.state_dict(), tmp_path))
        assert np.array_equal(restored.score(queries, query_logits), expected), name
    assert fit_partner("knn", train).k_ == 50 and fit_partner("vim", train).dim_ == 3  # D // 2, the paper's rule
    with pytest.raises(ValueError, match="unknown fusion partner 'odin'"):
        fit_partner("odin", train)
    with pytest.raises(ConfigError, match="fusion.partner=vim: .*'head'"):
        fit_partner("vim", {k: v for k, v in train.items() if k != "head"})
    state = fit_partner("vim", train).state_dict()
    with pytest.raises(ValueError, match="do not fit dim 3"):
        ViM.from_state({**state, "residual_basis": state["residual_basis"][:, :2]})


def test_fusion_detector_entry_round_trip(tmp_path):
    feats, logits, labels = _features()
    partner = fit_partner("mahalanobis", {"features": feats, "logits": logits, "labels": labels})
    val_errors = np.linspace(0.1, 0.5, 12)
    zscore = ZScoreFusion().fit(val_errors, partner.score(feats[:12], logits[:12]))
    fusion = FusionDetector("mahalanobis", partner, zscore, 1.25)
    again = FusionDetector.from_state(_reload(fusion.state_dict(), tmp_path))
    assert again.name == "cae+mahalanobis" and again.threshold == 1.25
    errors = np.linspace(0.0, 1.0, 36)
    fused = fusion.score(errors, feats, logits)
    assert np.array_equal(again.score(errors, feats, logits), fused)
    # by hand: z of the error plus z of the minimum squared Mahalanobis distance, through the precision
    s = zscore.state_dict()
    dist = np.array([min((x - m) @ partner.precision_ @ (x - m) for m in partner.means_) for x in feats])
    np.testing.assert_allclose(fused, (errors - s["attention_mean"]) / s["attention_std"]
                               + (dist - s["feature_mean"]) / s["feature_std"], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="partner 'odin'"):
        FusionDetector.from_state({**fusion.state_dict(), "partner": "odin"})


def test_fusion_with_rmds_partner_survives_a_checkpoint_and_matches_by_hand(tmp_path):
    feats, logits, labels = _features(rank_deficient=True)
    partner = fit_partner("rmds", {"features": feats, "logits": logits, "labels": labels})
    zscore = ZScoreFusion().fit(np.linspace(0.1, 0.5, 12), partner.score(feats[:12], logits[:12]))
    fusion = FusionDetector("rmds", partner, zscore, 0.5)
    again = FusionDetector.from_state(_reload(fusion.state_dict(), tmp_path))
    assert again.name == "cae+rmds" and again.partner_name == "rmds" and again.threshold == 0.5
    errors = np.linspace(0.0, 1.0, 36)
    fused = fusion.score(errors, feats, logits)
    assert np.array_equal(again.score(errors, feats, logits), fused)
    # by hand: class means, the pooled within-class and the total covariance (1/N), np.linalg.pinv of each
    means = {c: feats[labels == c].mean(0) for c in (2, 5, 9)}
    within = sum(np.outer(f - means[y], f - means[y]) for f, y in zip(feats, labels)) / 36
    mu0 = feats.mean(0)
    prec, prec0 = np.linalg.pinv(within), np.linalg.pinv(np.cov(feats.T, bias=True))
    rmds = np.array([min((x - m) @ prec @ (x - m) for m in means.values()) - (x - mu0) @ prec0 @ (x - mu0)
                     for x in feats])
    s = zscore.state_dict()
    np.testing.assert_allclose(fused, (errors - s["attention_mean"]) / s["attention_std"]
                               + (rmds - s["feature_mean"]) / s["feature_std"], rtol=1e-8, atol=1e-8)
