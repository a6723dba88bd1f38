"""Statistics over seeds: the resampled AUROC against sklearn, means and spreads against hand-computed values,
and paired bootstrap intervals on cases whose difference is known."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from wildcapture.ood.metrics import auroc, fpr_at_tpr
from wildcapture.ood.bootstrap import resample_counts, resampled_auroc
from wildcapture.ood.seeds_summary import (COLUMNS, DetectorRun, caption, detector_run, family, paired_delta,
                                           summarise, summarise_sets, to_markdown, write_summary)


def _sklearn_auroc(id_scores, ood_scores):
    return roc_auc_score(np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))], np.r_[id_scores, ood_scores])


def test_resample_counts_are_draws_with_replacement():
    counts = resample_counts(7, 500, np.random.default_rng(3))
    assert counts.shape == (500, 7) and counts.dtype.kind == "i" and counts.min() >= 0
    assert (counts.sum(1) == 7).all()
    assert (counts == 0).any() and (counts > 1).any()  # with replacement: some items left out, some repeated
    # each item is drawn n * resamples / n times on average
    assert abs(counts.sum(0).mean() - 500) < 1e-9 and counts.sum(0).min() > 350
    np.testing.assert_array_equal(counts, resample_counts(7, 500, np.random.default_rng(3)))


def test_resampled_auroc_equals_sklearn_on_the_resampled_arrays_ties_included():
    rng = np.random.default_rng(0)
    id_scores = np.round(rng.normal(0, 1, 60), 1)  # rounded: many ties, within and across the splits
    ood_scores = np.round(rng.normal(0.7, 1, 45), 1)
    id_counts, ood_counts = resample_counts(60, 300, rng), resample_counts(45, 300, rng)
    fast = resampled_auroc(id_scores, ood_scores, id_counts, ood_counts)
    slow = [_sklearn_auroc(np.repeat(id_scores, id_counts[b]), np.repeat(ood_scores, ood_counts[b])) for b in range(300)]
    assert np.abs(fast - slow).max() < 1e-12
    assert len(set(np.round(fast, 9))) > 50  # the resamples differ
    full = resampled_auroc(id_scores, ood_scores, np.ones((1, 60), int), np.ones((1, 45), int))
    assert full[0] == pytest.approx(auroc(id_scores, ood_scores), abs=1e-12)
    # blocks of resamples give the same values as one block
    import wildcapture.ood.bootstrap as bootstrap
    old, bootstrap._BLOCK_CELLS = bootstrap._BLOCK_CELLS, 105 * 7
    try:
        np.testing.assert_array_equal(resampled_auroc(id_scores, ood_scores, id_counts, ood_counts), fast)
    finally:
        bootstrap._BLOCK_CELLS = old


def test_resampled_auroc_refuses_counts_of_another_shape():
    with pytest.raises(ValueError, match="do not fit 3 ID and 2 OOD"):
        resampled_auroc(np.zeros(3), np.ones(2), np.ones((4, 2)), np.ones((4, 2)))


def test_families():
    assert family("cae") == family("cae[cls_last/paper]") == "attention"
    assert family("cae+knn") == family("cae+vim[rollout]") == "fusion"
    assert {family(d) for d in ("msp", "maxlogit", "energy", "mahalanobis", "rmds", "knn", "vim")} == {"feature"}


def test_mean_and_sample_std_over_seeds_by_hand():
    runs = {0: {"cae[a]": DetectorRun(0.9, 0.1), "vim": DetectorRun(0.6, 0.5)},
            3: {"cae[a]": DetectorRun(0.6, 0.2), "vim": DetectorRun(0.8, 0.3)},
            5: {"cae[a]": DetectorRun(0.3, 0.6), "vim": DetectorRun(0.7, 0.4)}}
    summary = summarise(runs)
    rows = {r["detector"]: r for r in summary.rows}
    assert list(rows) == ["vim", "cae[a]"]  # by mean AUROC, best first
    assert rows["vim"]["auroc_mean"] == pytest.approx(0.7) and rows["vim"]["auroc_std"] == pytest.approx(0.1)
    assert rows["vim"]["fpr95_mean"] == pytest.approx(0.4) and rows["vim"]["fpr95_std"] == pytest.approx(0.1)
    assert rows["cae[a]"]["auroc_mean"] == pytest.approx(0.6) and rows["cae[a]"]["auroc_std"] == pytest.approx(0.3)
    assert rows["cae[a]"]["fpr95_mean"] == pytest.approx(0.3)
    assert rows["cae[a]"]["fpr95_std"] == pytest.approx(math.sqrt((0.2 ** 2 + 0.1 ** 2 + 0.3 ** 2) / 2))
    assert {r["n_seeds"] for r in summary.rows} == {3} and rows["cae[a]"]["family"] == "attention"
    # no per-image scores: no reference, no interval
    assert summary.reference is None and math.isnan(rows["vim"]["delta_auroc_ci_low"])
    assert list(summary.rows[0]) == list(COLUMNS)

    one = summarise({4: {"vim": DetectorRun(0.6, 0.5)}}).rows[0]
    assert one["auroc_mean"] == 0.6 and math.isnan(one["auroc_std"]) and math.isnan(one["fpr95_std"])
    with pytest.raises(ValueError, match="seed 1 has detectors"):
        summarise({0: {"vim": DetectorRun(0.6, 0.5)}, 1: {"knn": DetectorRun(0.6, 0.5)}})


def _scores(rng, n_id=80, n_ood=120):
    return rng.normal(0, 1, n_id), rng.normal(0, 1, n_ood)


def test_identical_detectors_differ_by_exactly_zero():
    rng = np.random.default_rng(1)
    runs = {}
    for s in range(3):
        id_scores, ood_scores = _scores(rng)
        ood_scores += 0.5 * s
        runs[s] = {"knn": detector_run(id_scores, ood_scores), "cae[a]": detector_run(id_scores, ood_scores)}
    rows = {r["detector"]: r for r in summarise(runs, resamples=200).rows}
    for name in ("knn", "cae[a]"):
        assert (rows[name]["delta_auroc"], rows[name]["delta_auroc_ci_low"], rows[name]["delta_auroc_ci_high"]) \
            == (0.0, 0.0, 0.0)
    assert rows["knn"]["auroc_std"] > 0.05  # the seeds do differ


def test_perfect_against_random_detector_gives_a_clearly_positive_interval():
    rng = np.random.default_rng(2)
    runs = {}
    for s in range(2):
        id_scores, ood_scores = _scores(rng)
        runs[s] = {"msp": detector_run(id_scores, ood_scores),  # random: AUROC about 0.5
                   "mahalanobis": detector_run(id_scores, ood_scores - 0.3),  # worse than msp
                   "cae[a]": detector_run(id_scores, ood_scores + 100.0),  # perfect: AUROC 1 on every resample
                   "cae+knn[a]": DetectorRun(0.95, 0.1)}  # from a table only
    summary = summarise(runs, resamples=500, seed=7)
    rows = {r["detector"]: r for r in summary.rows}
    assert summary.reference == "msp" and (summary.n_id, summary.n_ood) == (80, 120)
    assert [r["detector"] for r in summary.rows] == ["cae[a]", "cae+knn[a]", "msp", "mahalanobis"]
    perfect = rows["cae[a]"]
    assert perfect["auroc_mean"] == 1.0 and perfect["fpr95_mean"] == 0.0
    # the perfect detector's delta is 1 - AUROC(msp) on the full sample and on every resample
    assert perfect["delta_auroc"] == pytest.approx(1 - np.mean([runs[s]["msp"].auroc for s in range(2)]), abs=1e-12)
    assert 0.3 < perfect["delta_auroc_ci_low"] < perfect["delta_auroc"] < perfect["delta_auroc_ci_high"] < 0.7
    rng = np.random.default_rng(7)  # the same resamples, drawn again: the interval is 1 - msp's percentiles
    id_counts, ood_counts = resample_counts(80, 500, rng), resample_counts(120, 500, rng)
    msp = np.mean([resampled_auroc(*runs[s]["msp"].scores, id_counts, ood_counts) for s in range(2)], axis=0)
    low, high = np.percentile(1 - msp, [2.5, 97.5])
    assert (perfect["delta_auroc_ci_low"], perfect["delta_auroc_ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert rows["mahalanobis"]["delta_auroc_ci_high"] < 0  # shifted the wrong way: worse than msp
    assert rows["cae+knn[a]"]["family"] == "fusion" and math.isnan(rows["cae+knn[a]"]["delta_auroc"])
    assert rows["msp"]["fpr95_mean"] == pytest.approx(np.mean([fpr_at_tpr(*runs[s]["msp"].scores) for s in range(2)]))


def test_summary_files(tmp_path):
    runs = {s: {"vim": detector_run(np.arange(5.0), np.arange(5.0) + s), "cae+vim[a]": DetectorRun(0.5, 0.5)}
            for s in range(2)}
    summaries = summarise_sets({"heldout": runs}, {"heldout": "near"}, resamples=50)
    rows = summaries["heldout"].rows
    text = caption(summaries, [0, 1], ["a"], 50)
    paths = write_summary(tmp_path, {"seeds": [0, 1]}, rows, text)
    saved = json.loads(paths["json"].read_text())
    assert saved["study"] == {"seeds": [0, 1]} and saved["caption"] == text and saved["columns"] == list(COLUMNS)
    fusion = next(r for r in saved["rows"] if r["detector"] == "cae+vim[a]")
    assert fusion["delta_auroc"] is None and fusion["auroc_std"] == 0.0  # NaN is null in JSON
    assert [r["detector"] for r in saved["rows"]] == ["vim", "cae+vim[a]"]
    assert {(r["ood_set"], r["group"]) for r in saved["rows"]} == {("heldout", "near")}
    md = paths["md"].read_text()
    assert md == to_markdown(rows, text)
    assert "test_id 5 ID; OOD sets: heldout 5 OOD (reference vim)" in text and "50 resamples" in text
    assert "| heldout | near | cae+vim[a] | fusion | 0.5000 | 0.0000 | 0.5000 | 0.0000 | 2 | n/a | n/a |" in md


def test_summarise_sets_gives_each_set_its_own_reference_and_each_group_its_mean():
    rng = np.random.default_rng(3)
    ids = [rng.normal(0, 1, 30) for _ in range(2)]

    def run(shift: float, s: int) -> DetectorRun:
        return detector_run(ids[s], rng.normal(shift, 1, 20))

    # set a: msp separates better than energy; set b: the reverse; c is far
    runs = {"a": {s: {"msp": run(2.0, s), "energy": run(0.5, s)} for s in range(2)},
            "b": {s: {"msp": run(0.2, s), "energy": run(1.5, s)} for s in range(2)},
            "c": {s: {"msp": run(3.0, s), "energy": run(3.0, s)} for s in range(2)}}
    summaries = summarise_sets(runs, {"a": "near", "b": "near", "c": "far"}, resamples=100)
    assert summaries["a"].reference == "msp" and summaries["b"].reference == "energy"
    assert set(summaries) == {"a", "b", "c", "mean:near", "mean:far"}
    near = {r["detector"]: r for r in summaries["mean:near"].rows}
    for d in ("msp", "energy"):
        per_seed = [np.mean([runs[n][s][d].auroc for n in ("a", "b")]) for s in range(2)]
        assert near[d]["auroc_mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert near[d]["auroc_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
        deltas = [r["delta_auroc"] for n in ("a", "b") for r in summaries[n].rows if r["detector"] == d]
        assert near[d]["delta_auroc"] == pytest.approx(np.mean(deltas), abs=1e-12)
        assert (near[d]["ood_set"], near[d]["group"]) == ("mean", "near") and math.isnan(near[d]["delta_auroc_ci_low"])
    assert summarise_sets({"a": runs["a"]}, {"a": "near"}, resamples=10).keys() == {"a"}  # one set: no mean rows


def test_paired_delta_is_summarises_delta_for_one_detector_run_two_ways():
    rng = np.random.default_rng(5)
    before = {s: detector_run(rng.normal(0, 1, 30), rng.normal(1, 1, 20)) for s in range(3)}
    after = {s: detector_run(r.scores[0] + rng.normal(0, 0.3, 30), r.scores[1]) for s, r in before.items()}
    rows = {r["detector"]: r for r in summarise({s: {"msp": before[s], "cae": after[s]} for s in before}, 200).rows}
    expected = tuple(rows["cae"][c] for c in ("delta_auroc", "delta_auroc_ci_low", "delta_auroc_ci_high"))
    assert paired_delta(before, after, 200) == pytest.approx(expected)
    assert paired_delta(before, before, 200) == (0.0, 0.0, 0.0)
