"""OOD metrics against hand-computed values (OOD = positive, higher score = more OOD)."""
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from wildcapture.ood.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics, roc_points

ID = np.array([0.1, 0.4, 0.35])
OOD = np.array([0.8, 0.6, 0.2])


def brute_fpr_at_tpr(id_s, ood_s, level=0.95):
    """Largest threshold t with mean(ood >= t) >= level; return mean(id >= t)."""
    for t in np.unique(np.concatenate([id_s, ood_s]))[::-1]:
        if np.mean(ood_s >= t) >= level:
            return float(np.mean(id_s >= t))
    raise AssertionError("unreachable: the lowest score flags every OOD sample")


def test_hand_computed_case():
    # Pairs (ood, id) with ood > id: 0.8 beats 3, 0.6 beats 3, 0.2 beats only 0.1 -> 7 of 9.
    assert auroc(ID, OOD) == pytest.approx(7 / 9)
    # By score desc: O(.8) O(.6) I(.4) I(.35) O(.2) I(.1); precision at each OOD: 1, 1, 3/5.
    assert aupr_out(ID, OOD) == pytest.approx((1 + 1 + 3 / 5) / 3)
    # By score asc: I(.1) O(.2) I(.35) I(.4) O O; precision at each ID: 1, 2/3, 3/4.
    assert aupr_in(ID, OOD) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # 95% of 3 OOD needs all 3 -> threshold 0.2 -> ID 0.4 and 0.35 flagged.
    assert fpr_at_tpr(ID, OOD) == pytest.approx(2 / 3)
    m = ood_metrics(ID, OOD)
    assert set(m) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    assert m["auroc"] == pytest.approx(7 / 9) and m["fpr95"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in m.values())


def test_perfect_and_reversed():
    perfect = ood_metrics(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0]))
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    rev = ood_metrics(np.array([3.0, 4.0]), np.array([0.0, 1.0, 2.0]))
    assert rev["auroc"] == 0.0 and rev["fpr95"] == 1.0
    # OOD ranked last: precision at the OOD ranks 3, 4, 5 is 1/3, 2/4, 3/5.
    assert rev["aupr_out"] == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3)


def test_all_scores_tied():
    m = ood_metrics(np.full(4, 0.7), np.full(6, 0.7))
    assert m["auroc"] == 0.5
    assert m["fpr95"] == 1.0
    # one threshold group: precision = class prevalence
    assert m["aupr_out"] == pytest.approx(0.6) and m["aupr_in"] == pytest.approx(0.4)


def test_fpr95_threshold_inside_a_tie_group():
    # 20 OOD: 18 at 5.0, 2 at 1.0; 10 ID: 4 at 1.0, 6 at 0.0. TPR is 0.90 at t=5 and 1.0 at t=1,
    # so the threshold is 1.0 and the tie cannot be split: the 4 ID at 1.0 are all flagged.
    ood = np.r_[np.full(18, 5.0), np.full(2, 1.0)]
    idd = np.r_[np.full(4, 1.0), np.zeros(6)]
    assert fpr_at_tpr(idd, ood) == pytest.approx(0.4)
    assert brute_fpr_at_tpr(idd, ood) == pytest.approx(0.4)


def test_fpr95_not_fooled_by_collinear_roc_points():
    # Pairwise ties ID = OOD = 0..19: the ROC is the diagonal; TPR = 19/20 at t=1 with FPR 19/20.
    # sklearn's default drop_intermediate=True keeps only the end points and would give 1.0.
    s = np.arange(20.0)
    assert fpr_at_tpr(s, s) == pytest.approx(0.95)
    labels = np.r_[np.zeros(20), np.ones(20)]
    fpr_d, tpr_d, _ = roc_curve(labels, np.r_[s, s])  # drop_intermediate=True
    assert fpr_d[np.argmax(tpr_d >= 0.95)] == 1.0


def test_fpr95_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idd = rng.integers(0, 8, size=rng.integers(5, 60)).astype(float)
        ood = rng.integers(2, 10, size=rng.integers(5, 60)).astype(float)
        assert fpr_at_tpr(idd, ood) == pytest.approx(brute_fpr_at_tpr(idd, ood))
        assert fpr_at_tpr(idd, ood, 0.5) == pytest.approx(brute_fpr_at_tpr(idd, ood, 0.5))
        pairs = (ood[:, None] > idd[None]).mean() + 0.5 * (ood[:, None] == idd[None]).mean()
        assert auroc(idd, ood) == pytest.approx(pairs)


def test_roc_points_start_at_origin_and_end_at_one():
    fpr, tpr, thr = roc_points(ID, OOD)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert len(thr) == 7  # +inf and 6 distinct scores


@pytest.mark.parametrize("idd, ood, word", [
    (np.array([]), np.array([1.0]), "empty ID split"),
    (np.array([1.0]), np.array([]), "empty OOD split"),
    (np.array([1.0, np.nan]), np.array([1.0]), "non-finite"),
    (np.array([1.0]), np.array([np.inf]), "OOD scores contain 1 non-finite"),
    (np.ones((2, 2)), np.array([1.0]), "1-D"),
])
def test_bad_input_raises_clear_error(idd, ood, word):
    with pytest.raises(ValueError, match=word):
        ood_metrics(idd, ood)
