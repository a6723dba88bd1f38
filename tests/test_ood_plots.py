"""OOD plots are written off-screen as non-empty image files."""
import numpy as np

from wildcapture.ood.plots import plot_roc_curves, plot_score_histograms


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
