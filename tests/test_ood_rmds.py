"""RMDS (relative Mahalanobis distance) against hand values, explicit numpy loops and an OpenOOD-style sklearn
transcription, and through a checkpoint."""
import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance

from wildcapture.ood.baselines import RMDS, Mahalanobis


def _data(rank_deficient=False):
    rng = np.random.default_rng(11)
    labels = np.repeat([3, 8, 4], [30, 25, 35])  # non-contiguous ids, unequal classes
    centres = {3: [0.0, 1.0, -2.0, 0.5, 0.0], 8: [3.0, -1.0, 0.0, 2.0, 1.0], 4: [-2.0, 2.0, 1.0, -1.0, 3.0]}
    mixing = rng.normal(size=(5, 5))
    feats = np.array([centres[c] for c in labels]) + rng.normal(size=(90, 5)) @ mixing
    if rank_deficient:  # a copied column: both covariances are singular and pinv drops a direction
        feats[:, 4] = feats[:, 1]
    queries = rng.normal(size=(12, 5)) * 3
    if rank_deficient:
        queries[:, 4] = queries[:, 1]
    return feats, labels, queries


def explicit_rmds(feats, labels, queries):
    """min over classes of MD_c - MD_0, with loops, outer products and np.linalg.pinv."""
    n, d = feats.shape
    classes = sorted(set(labels.tolist()))
    means = {c: sum(f for f, y in zip(feats, labels) if y == c) / np.sum(labels == c) for c in classes}
    within = np.zeros((d, d))
    for f, y in zip(feats, labels):
        within += np.outer(f - means[y], f - means[y])
    prec = np.linalg.pinv(within / n)
    mu0 = feats.sum(axis=0) / n
    total = np.zeros((d, d))
    for f in feats:
        total += np.outer(f - mu0, f - mu0)
    prec0 = np.linalg.pinv(total / n)
    scores = []
    for x in queries:
        md0 = (x - mu0) @ prec0 @ (x - mu0)
        scores.append(min((x - means[c]) @ prec @ (x - means[c]) - md0 for c in classes))
    return np.array(scores)


def openood_style_rmds(feats, labels, queries):
    """OpenOOD v1.5's recipe in float64: sklearn EmpiricalCovariance precisions (pinvh), confidence
    max_c -(MD_c - MD_0), negated to higher = more OOD."""
    classes = np.unique(labels)
    means = np.stack([feats[labels == c].mean(0) for c in classes])
    centered = np.concatenate([feats[labels == c] - means[i] for i, c in enumerate(classes)])
    prec = EmpiricalCovariance(assume_centered=False).fit(centered).precision_
    mu0 = feats.mean(0)
    prec0 = EmpiricalCovariance(assume_centered=False).fit(feats - mu0).precision_
    background = -np.einsum("nd,de,ne->n", queries - mu0, prec0, queries - mu0)
    conf = np.stack([-np.einsum("nd,de,ne->n", queries - m, prec, queries - m) - background for m in means], 1)
    return -conf.max(axis=1)


def test_rmds_hand_values():
    # classes around (0,0) and (10,0) with the same offsets: within-class covariance diag(0.5, 2); all eight
    # points: mean (5,0), covariance diag(0.5 + 25, 2)
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    feats = np.r_[offsets, offsets + [10.0, 0.0]]
    det = RMDS().fit(feats, np.zeros((8, 2)), np.repeat([0, 1], 4))
    pts = np.array([[1.0, 1.0], [5.0, 0.0]])
    # (1,1): MD_0 = 16/25.5 + 1/2, min MD_c = 2 + 1/2;  (5,0): MD_0 = 0, MD_c = 25/0.5 = 50 to both
    np.testing.assert_allclose(det.score(pts, np.zeros((2, 2))), [2.0 - 16 / 25.5, 50.0], rtol=1e-12)
    np.testing.assert_allclose(det.background.means_, [[5.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(det.background.precision_, np.diag([1 / 25.5, 0.5]), atol=1e-12)


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_rmds_matches_explicit_pinv_loops_and_the_openood_recipe(rank_deficient):
    feats, labels, queries = _data(rank_deficient)
    det = RMDS().fit(feats, np.zeros((90, 3)), labels)
    scores = det.score(queries, np.zeros((12, 3)))
    assert scores.dtype == np.float64 and scores.shape == (12,)
    np.testing.assert_allclose(scores, explicit_rmds(feats, labels, queries), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(scores, openood_style_rmds(feats, labels, queries), rtol=1e-8, atol=1e-8)
    # the class part is our Mahalanobis: RMDS = min_c MD_c - MD_0
    maha = Mahalanobis().fit(feats, None, labels).distances(queries)
    np.testing.assert_allclose(scores, maha.min(1) - det.background.distances(queries)[:, 0], rtol=1e-12, atol=1e-9)


def test_rmds_state_round_trip_gives_identical_scores(tmp_path):
    feats, labels, queries = _data()
    det = RMDS().fit(feats, np.zeros((90, 3)), labels)
    torch.save({"entry": det.state_dict()}, tmp_path / "state.pth")
    state = torch.load(tmp_path / "state.pth", map_location="cpu", weights_only=True)["entry"]
    assert state["classes"]["classes"] == [3, 4, 8] and state["background"]["classes"] == [0]
    assert state["background"]["means"].dtype == torch.float64
    again = RMDS.from_state(state)
    assert np.array_equal(again.score(queries, np.zeros((12, 3))), det.score(queries, np.zeros((12, 3))))
    wrong = Mahalanobis().fit(feats[:, :4], None, np.zeros(90)).state_dict()
    with pytest.raises(ValueError, match="background mean"):
        RMDS.from_state({**state, "background": wrong})


def test_rmds_refuses_missing_labels_and_an_unfitted_score():
    with pytest.raises(ValueError, match="RMDS needs the train_id class labels"):
        RMDS().fit(np.zeros((2, 3)), np.zeros((2, 2)), None)
    with pytest.raises(RuntimeError, match="RMDS must be fit"):
        RMDS().score(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="RMDS must be fit"):
        RMDS().state_dict()
