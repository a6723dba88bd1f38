"""Post-hoc baselines against hand values and independent straightforward implementations."""
import math

import numpy as np
import pytest

from wildcapture.heatmap_store import SplitArrays
from sklearn.covariance import EmpiricalCovariance

from wildcapture.ood.baselines import (
    DETECTORS, KNN, MSP, RMDS, Energy, Mahalanobis, MaxLogit, ViM, fit_detectors, score_all,
)

LOGITS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
FEATS2 = np.zeros((2, 4))


def test_msp_maxlogit_energy_hand_values():
    e = math.e
    msp = MSP().fit(FEATS2, LOGITS, np.zeros(2)).score(FEATS2, LOGITS)
    np.testing.assert_allclose(msp, [-e**3 / (e + e**2 + e**3), -1 / 3])
    np.testing.assert_allclose(MaxLogit().score(FEATS2, LOGITS), [-3.0, 0.0])
    energy = Energy().score(FEATS2, LOGITS)
    np.testing.assert_allclose(energy, [-math.log(e + e**2 + e**3), -math.log(3)])
    assert energy.dtype == np.float64 and energy.shape == (2,)


def test_energy_and_msp_stable_for_huge_logits():
    big = np.array([[1000.0, 1000.0], [-1000.0, 0.0]])
    f = np.zeros((2, 1))
    np.testing.assert_allclose(Energy().score(f, big), [-(1000 + math.log(2)), 0.0], atol=1e-12)
    np.testing.assert_allclose(MSP().score(f, big), [-0.5, -1.0])


def test_mahalanobis_known_shared_covariance():
    # Both classes get the same offsets around their means (0,0) and (10,0); the pooled
    # within-class covariance is diag(mean of x^2, mean of y^2) = diag(0.5, 2).
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    feats = np.r_[offsets, offsets + [10.0, 0.0]]
    labels = np.r_[np.zeros(4, int), np.ones(4, int)]
    det = Mahalanobis().fit(feats, np.zeros((8, 2)), labels)
    np.testing.assert_allclose(det.means_, [[0, 0], [10, 0]])
    np.testing.assert_allclose(det.precision_, np.diag([2.0, 0.5]), atol=1e-12)
    pts = np.array([[1.0, 1.0], [5.0, 2.0], [9.0, 0.0]])
    # (1,1): 1/0.5 + 1/2 = 2.5 to class 0; (5,2): 25/0.5 + 4/2 = 52 to both; (9,0): 1/0.5 = 2.
    np.testing.assert_allclose(det.score(pts, np.zeros((3, 2))), [2.5, 52.0, 2.0])


def test_mahalanobis_matches_inverse_covariance_formula():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    means = np.array([[0.0, 0.0, 0.0], [4.0, -1.0, 2.0], [-3.0, 3.0, 1.0]])
    labels = np.repeat([5, 7, 9], 40)  # non-contiguous class ids
    feats = means[np.repeat([0, 1, 2], 40)] + rng.multivariate_normal(np.zeros(3), cov, 120)
    det = Mahalanobis().fit(feats, np.zeros((120, 3)), labels)
    mus = np.stack([feats[labels == c].mean(0) for c in (5, 7, 9)])
    centered = feats - mus[np.repeat([0, 1, 2], 40)]
    prec = np.linalg.inv(np.cov(centered.T, bias=True))
    x = rng.normal(size=(6, 3)) * 3
    expected = np.array([min((xi - m) @ prec @ (xi - m) for m in mus) for xi in x])
    np.testing.assert_allclose(det.score(x, np.zeros((6, 3))), expected, rtol=1e-10)


def test_mahalanobis_singular_covariance_uses_pinv():
    # A constant third feature makes the covariance singular; distances equal the 2-D ones.
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    feats = np.c_[np.r_[offsets, offsets + [10.0, 0.0]], np.full(8, 3.0)]
    det = Mahalanobis().fit(feats, np.zeros((8, 2)), np.r_[np.zeros(4), np.ones(4)])
    pts = np.array([[1.0, 1.0, 3.0], [9.0, 0.0, 3.0]])
    np.testing.assert_allclose(det.score(pts, np.zeros((2, 2))), [2.5, 2.0], atol=1e-9)


def test_knn_chord_distances_on_unit_circle():
    ang = np.deg2rad([0.0, 90.0, 180.0])
    train = np.c_[np.cos(ang), np.sin(ang)] * np.array([[1.0], [3.0], [0.5]])  # norms do not matter
    logits = np.zeros((3, 2))
    q = np.array([[5.0, 0.0], [np.cos(np.pi / 4), np.sin(np.pi / 4)]])
    ql = np.zeros((2, 2))

    def knn(k):
        return KNN(k=k).fit(train, logits, np.zeros(3)).score(q, ql)

    np.testing.assert_allclose(knn(1), [0.0, 2 * math.sin(np.pi / 8)], atol=1e-7)
    np.testing.assert_allclose(knn(2), [math.sqrt(2), 2 * math.sin(np.pi / 8)], atol=1e-12)
    np.testing.assert_allclose(knn(3), [2.0, 2 * math.sin(3 * np.pi / 8)], atol=1e-12)
    det = KNN(k=50).fit(train, logits, np.zeros(3))
    assert det.k_ == 3  # capped by the 3 train features
    np.testing.assert_allclose(det.score(q, ql), knn(3))


def test_knn_blocks_match_single_block():
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(37, 5)), rng.normal(size=(23, 5))
    one = KNN(k=4).fit(train, np.zeros((37, 1)), np.zeros(37)).score(test, np.zeros((23, 1)))
    small = KNN(k=4, block_entries=37 * 3).fit(train, np.zeros((37, 1)), np.zeros(37))
    np.testing.assert_allclose(small.score(test, np.zeros((23, 1))), one)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    expected = np.sort(np.linalg.norm(qn[:, None] - tn[None], axis=2), axis=1)[:, 3]
    np.testing.assert_allclose(one, expected, atol=1e-7)


def test_knn_state_is_k_and_the_normalised_bank_and_restores_identical_scores(tmp_path):
    import torch

    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(30, 5)) * 2, rng.normal(size=(9, 5))
    det = KNN(k=4).fit(train, np.zeros((30, 1)), np.zeros(30))
    torch.save({"entry": det.state_dict()}, tmp_path / "knn.pth")
    state = torch.load(tmp_path / "knn.pth", map_location="cpu", weights_only=True)["entry"]
    assert state["k"] == 4 and state["bank"].dtype == torch.float64 and tuple(state["bank"].shape) == (30, 5)
    np.testing.assert_allclose(state["bank"].numpy(), train / np.linalg.norm(train, axis=1, keepdims=True),
                               rtol=1e-15)
    again = KNN.from_state(state)
    assert again.k_ == 4 and np.array_equal(again.score(test, np.zeros((9, 1))), det.score(test, np.zeros((9, 1))))
    assert KNN.from_state({"k": 50, "bank": state["bank"]}).k_ == 30  # capped again by the bank's rows
    with pytest.raises(ValueError, match="non-empty"):
        KNN.from_state({"k": 4, "bank": state["bank"][0]})


def reference_vim(w, b, dim, train_f, train_l, test_f, test_l):
    """Straightforward transcription of the official recipe (sklearn covariance, np.linalg.eig)."""
    u = -np.linalg.pinv(w) @ b
    ec = EmpiricalCovariance(assume_centered=True).fit(train_f - u)
    vals, vecs = np.linalg.eig(ec.covariance_)
    ns = vecs.T[np.argsort(-vals)[dim:]].T.real
    alpha = train_l.max(1).mean() / np.linalg.norm((train_f - u) @ ns, axis=1).mean()
    vlogit = np.linalg.norm((test_f - u) @ ns, axis=1) * alpha
    energy = np.log(np.exp(test_l).sum(1))
    return -(energy - vlogit)  # official ID score negated -> higher = more OOD


def _vim_data(seed=3, n=200, d=8, c=3):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(d, d)) * np.r_[np.full(3, 3.0), np.full(d - 3, 0.3)][:, None]
    feats = rng.normal(size=(n, d)) @ basis
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    return feats, feats @ w.T + b, w, b


def test_vim_matches_reference_implementation():
    feats, logits, w, b = _vim_data()
    train_f, train_l, test_f, test_l = feats[:150], logits[:150], feats[150:], logits[150:]
    det = ViM(dim=4).fit(train_f, train_l, np.zeros(150), head=(w, b))
    expected = reference_vim(w, b, 4, train_f, train_l, test_f, test_l)
    np.testing.assert_allclose(det.score(test_f, test_l), expected, rtol=1e-9, atol=1e-9)
    assert det.residual_basis_.shape == (8, 4)


def test_vim_score_grows_off_the_principal_subspace():
    feats, logits, w, b = _vim_data()
    det = ViM(dim=4).fit(feats, logits, np.zeros(len(feats)), head=(w, b))
    ns = det.residual_basis_
    x0 = feats[0] - ((feats[0] - det.origin_) @ ns) @ ns.T  # no residual component
    t = np.array([0.0, 1.0, 2.0, 4.0])
    pts = x0 + np.outer(t, ns[:, 0])
    np.testing.assert_allclose(det.vlogit(pts), t, atol=1e-9)
    s = det.score(pts, np.repeat(logits[:1], 4, axis=0))  # logits held fixed
    np.testing.assert_allclose(s - s[0], det.alpha_ * t, atol=1e-9)
    assert det.alpha_ > 0 and np.all(np.diff(s) > 0)


def test_vim_default_dim_and_bad_dim():
    assert [ViM.default_dim(d) for d in (4096, 2048, 1024, 768, 512, 8)] == [1000, 1000, 512, 512, 256, 4]
    feats, logits, w, b = _vim_data()
    assert ViM().fit(feats, logits, np.zeros(200), head=(w, b)).dim_ == 4
    with pytest.raises(ValueError, match="dim must be in"):
        ViM(dim=8).fit(feats, logits, np.zeros(200), head=(w, b))
    with pytest.raises(ValueError, match="head_weight expects 8"):
        ViM().fit(feats[:, :5], logits, np.zeros(200), head=(w, b))


def test_registry_fit_and_score_all():
    feats, logits, w, b = _vim_data(n=60)
    labels = logits.argmax(1)
    train = {"features": feats, "logits": logits, "labels": labels, "head": (w, b)}
    dets = fit_detectors(train, {"knn": {"k": 5}, "vim": {"dim": 3}})
    expected = {"msp": MSP, "maxlogit": MaxLogit, "energy": Energy, "mahalanobis": Mahalanobis, "rmds": RMDS,
                "knn": KNN, "vim": ViM}
    assert list(dets) == list(DETECTORS) == list(expected)
    assert all(isinstance(dets[n], cls) for n, cls in expected.items()) and dets["knn"].k_ == 5 and dets["vim"].dim_ == 3
    scores = score_all(dets, SplitArrays(logits[:7], feats[:7], np.zeros((7, 2, 2))))
    for name, s in scores.items():
        assert s.shape == (7,) and s.dtype == np.float64 and np.all(np.isfinite(s)), name
        np.testing.assert_array_equal(s, dets[name].score(feats[:7], logits[:7]))
    assert "vim" not in fit_detectors({**train, "head": None}, {"knn": {"k": 5}})


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="features has 2 rows but logits has 3"):
        Energy().score(np.zeros((2, 4)), np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="must be fit"):
        KNN().score(np.zeros((2, 4)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="labels has 3 entries"):
        Mahalanobis().fit(np.zeros((2, 4)), np.zeros((2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="needs the train_id class labels"):
        Mahalanobis().fit(np.zeros((2, 4)), np.zeros((2, 2)), None)
    with pytest.raises(ValueError, match="features contains NaN"):
        MSP().score(np.full((1, 2), np.nan), np.zeros((1, 2)))


def test_a_registered_detector_fitting_on_an_input_stage_2_lacks_is_refused_by_name(monkeypatch):
    from wildcapture.detector import Detector
    from wildcapture.errors import ConfigError

    class NeedsHeatmaps(Detector):
        fit_inputs = ("heatmaps",)

    monkeypatch.setitem(DETECTORS, "needs_heatmaps", NeedsHeatmaps)
    feats, logits, _, _ = _vim_data(n=20)
    with pytest.raises(ConfigError, match="detector needs_heatmaps fits on 'heatmaps'"):
        fit_detectors({"features": feats, "logits": logits, "labels": logits.argmax(1)})
