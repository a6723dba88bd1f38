"""OOD plots are written off-screen as non-empty image files."""
import numpy as np
import pytest

from wildcapture.ood.plots import draw_score_histograms, histogram_range, plot_roc_curves, plot_score_histograms


def _scores():
    rng = np.random.default_rng(0)
    return {name: (rng.normal(0, 1, 50), rng.normal(shift, 1, 40))
            for name, shift in (("cae", 2.0), ("msp", 0.5), ("energy", 1.0), ("knn", 1.5))}


def test_roc_and_histogram_files_are_written(tmp_path):
    roc = plot_roc_curves(_scores(), tmp_path / "plots" / "roc.png")
    hist = plot_score_histograms(_scores(), tmp_path / "plots" / "hist.png")
    for path in (roc, hist):
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_with_constant_scores(tmp_path):
    path = plot_score_histograms({"flat": (np.ones(5), np.ones(3))}, tmp_path / "flat.png")
    assert path.stat().st_size > 0


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
