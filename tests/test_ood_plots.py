"""OOD plots: the ROC curves drawn are `roc_points` with the AUROC in the legend, the histograms are
np.histogram densities of the scores, and the PNG files are written off-screen."""
import numpy as np
import pytest

from wildcapture.ood.metrics import auroc, roc_points
from wildcapture.ood.plots import (
    draw_roc_curves, draw_score_histograms, histogram_range, plot_roc_curves, plot_score_histograms,
)


def _scores():
    rng = np.random.default_rng(0)
    return {name: (rng.normal(0, 1, 50), rng.normal(shift, 1, 40))
            for name, shift in (("cae", 2.0), ("msp", 0.5), ("energy", 1.0), ("knn", 1.5))}


def test_roc_lines_are_the_roc_points_and_the_legend_has_each_auroc():
    scores = _scores()
    scores["tied"] = (np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 2.0, 2.0]))  # ties: one point per score
    ax = draw_roc_curves(scores, title="t").axes[0]
    curves, chance = ax.lines[:len(scores)], ax.lines[len(scores)]
    for line, (name, (id_s, ood_s)) in zip(curves, scores.items()):
        fpr, tpr, _ = roc_points(id_s, ood_s)
        np.testing.assert_array_equal(line.get_xdata(), fpr)
        np.testing.assert_array_equal(line.get_ydata(), tpr)
        assert line.get_label() == f"{name} (AUROC {auroc(id_s, ood_s):.4f})"
    np.testing.assert_array_equal(curves[-1].get_xdata(), [0, 0.25, 0.75, 1])  # thresholds inf, 2, 1, 0
    np.testing.assert_array_equal(curves[-1].get_ydata(), [0, 2 / 3, 1, 1])
    assert curves[-1].get_label() == "tied (AUROC 0.7500)"  # (2 + 2 * 3.5) / 12 pairs, a tie counts 0.5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in curves]
    assert list(chance.get_xdata()) == [0, 1] and list(chance.get_ydata()) == [0, 1]
    assert list(ax.lines[-1].get_ydata()) == [0.95, 0.95] and ax.get_title() == "t"


def test_histogram_bars_are_the_density_of_each_split_on_shared_bins():
    scores = _scores()
    fig = draw_score_histograms(scores, bins=20)
    assert [ax.get_title() for ax in fig.axes] == list(scores)
    for ax, (id_s, ood_s) in zip(fig.axes, scores.values()):
        lo, hi = histogram_range(np.concatenate([id_s, ood_s]))
        edges = np.linspace(lo, hi, 21)
        for bars, split in zip(ax.containers, (id_s, ood_s)):
            density, _ = np.histogram(split, bins=edges, density=True)  # nothing is clipped for these scores
            np.testing.assert_allclose([bar.get_height() for bar in bars], density)
            np.testing.assert_allclose([bar.get_x() for bar in bars], edges[:-1])
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f"ID (n={id_s.size})", f"OOD (n={ood_s.size})"]


def test_constant_scores_fill_one_bin_of_a_unit_range():
    ax = draw_score_histograms({"flat": (np.ones(5), np.ones(3))}, bins=4).axes[0]
    for bars in ax.containers:  # range 0.5..1.5, the value 1.0 on the edge between bins 1 and 2
        assert [bar.get_height() for bar in bars] == [0, 0, 4.0, 0]
        assert bars[0].get_x() == 0.5


def test_png_files_are_written_and_errors_name_the_draw_function(tmp_path):
    roc = plot_roc_curves(_scores(), tmp_path / "plots" / "roc.png")
    hist = plot_score_histograms(_scores(), tmp_path / "plots" / "hist.png")
    for path in (roc, hist):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="^draw_score_histograms: no detectors"):
        plot_score_histograms({}, tmp_path / "empty.png")


def test_one_huge_score_does_not_squeeze_the_rest_into_one_bin():
    rng = np.random.default_rng(1)
    id_s = np.append(rng.random(400), 1e6)
    ood_s = rng.random(300)
    lo, hi = histogram_range(np.concatenate([id_s, ood_s]))
    assert 0 <= lo < 0.01 and 0.99 < hi < 1.0  # the 0.5..99.5 percentiles: the outlier is cut off
    fig = draw_score_histograms({"mahalanobis": (id_s, ood_s)}, bins=50)
    ax = fig.axes[0]
    id_bars = ax.containers[0]
    assert len(id_bars) == 50 and sum(bar.get_height() > 0 for bar in id_bars) >= 40
    last = ax.containers[1][-1]
    assert id_bars[0].get_x() == pytest.approx(lo) and last.get_x() + last.get_width() == pytest.approx(hi)
    both = np.concatenate([id_s, ood_s])
    n_below, n_above = int((both < lo).sum()), int((both > hi).sum())
    assert n_below == 0 and n_above >= 1  # the bulk's smallest value is kept, the outlier is not
    assert [t.get_text() for t in ax.texts] == [f"in the edge bins: {n_above} above {hi:.4g}"]


def test_well_behaved_scores_keep_their_whole_range():
    values = np.linspace(-3.0, 7.0, 1000)  # no outliers: the bins span min..max and nothing is clipped
    assert histogram_range(values) == (-3.0, 7.0)
    fig = draw_score_histograms({"energy": (values[:500], values[500:])})
    assert not fig.axes[0].texts
    assert histogram_range(np.full(10, 2.0)) == (1.5, 2.5)
    both = np.append(values, [-1e9, 1e9])  # both ends cut at the percentiles: a few bulk values go too
    lo, hi = histogram_range(both)
    below, above = int((both < lo).sum()), int((both > hi).sum())
    assert lo == np.percentile(both, 0.5) and hi == np.percentile(both, 99.5) and below == above == 6
    texts = draw_score_histograms({"vim": (both[:-1], both[-1:])}).axes[0].texts
    assert [t.get_text() for t in texts] == [f"in the edge bins: 6 below {lo:.4g}, 6 above {hi:.4g}"]


def test_several_ood_sets_get_a_roc_subplot_each_and_a_histogram_each_per_detector():
    rng = np.random.default_rng(1)
    id_scores = {"cae": rng.normal(0, 1, 30), "msp": rng.normal(0, 1, 30)}
    sets = {d: {"near": rng.normal(0.5, 1, 20), "far": rng.normal(2.0, 1, 10)} for d in id_scores}
    scores = {d: (id_scores[d], sets[d]) for d in id_scores}
    fig = draw_roc_curves(scores, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["t: near", "t: far"]
    for ax, name in zip(fig.axes, ("near", "far")):
        for line, d in zip(ax.lines, id_scores):  # each detector against the same ID scores, on this set
            fpr, tpr, _ = roc_points(id_scores[d], sets[d][name])
            np.testing.assert_array_equal(line.get_xdata(), fpr)
            np.testing.assert_array_equal(line.get_ydata(), tpr)
            assert line.get_label() == f"{d} (AUROC {auroc(id_scores[d], sets[d][name]):.4f})"
    hist = draw_score_histograms(scores, bins=10)
    assert [ax.get_title() for ax in hist.axes] == ["cae", "msp"]
    for ax, d in zip(hist.axes, id_scores):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["ID (n=30)", "near (n=20)", "far (n=10)"]
        lo, hi = histogram_range(np.concatenate([id_scores[d], *sets[d].values()]))  # one range for all of them
        density, _ = np.histogram(np.clip(id_scores[d], lo, hi), bins=np.linspace(lo, hi, 11), density=True)
        np.testing.assert_allclose([bar.get_height() for bar in ax.containers[0]], density)
    # a single set given as a mapping draws as before: one ROC subplot titled as given
    assert [ax.get_title() for ax in draw_roc_curves({d: (i, {"heldout": sets[d]["far"]})
                                                      for d, i in id_scores.items()}, title="t").axes] == ["t"]
