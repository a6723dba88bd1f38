"""Reconstruction gallery: one colour scale per column over all rows, channel means of multi-channel maps."""
import numpy as np
import pytest
from PIL import Image

from wildcapture.cae.gallery import GalleryRow, draw_reconstruction_gallery, plot_reconstruction_gallery


def _rows(channels=None, n=3, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if channels is None else (channels,)
    rows = []
    for i in range(n):  # row i's maps are scaled by 10**i: a hot row and a cold one
        x = rng.random(lead + (8, 8)) * 10.0 ** i
        rows.append(GalleryRow(f"row {i}", Image.new("RGB", (12, 8)) if i else None, rng.random(lead + (4, 4)) * (i + 1),
                               x, x + rng.normal(0, 0.3, x.shape)))
    return rows


@pytest.mark.parametrize("channels", [None, 3])
def test_each_map_column_has_one_scale_spanning_all_rows(channels):
    rows = _rows(channels)
    fig = draw_reconstruction_gallery(rows, "heading")
    axes = np.array(fig.axes[:5 * len(rows)]).reshape(len(rows), 5)  # colorbars come after the grid
    mean = (lambda a: a) if channels is None else (lambda a: a.mean(0))
    expected = [[mean(r.heatmap) for r in rows], [mean(r.cae_input) for r in rows],
                [mean(r.reconstruction) for r in rows],
                [mean((r.reconstruction - r.cae_input) ** 2) for r in rows]]
    for c, column in enumerate(expected, start=1):
        lo, hi = min(m.min() for m in column), max(m.max() for m in column)
        for r, panel in enumerate(column):
            image = axes[r, c].images[0]
            np.testing.assert_allclose(image.get_array(), panel)
            assert (image.norm.vmin, image.norm.vmax) == pytest.approx((lo, hi))
    assert len(fig.axes) == 5 * len(rows) + 4  # one colorbar per map column
    assert not axes[0, 0].images and axes[1, 0].images  # row 0 has no image: a text panel
    if channels:
        assert "mean of 3 channels" in axes[0, 4].get_title()


def test_chosen_channel_and_shape_check(tmp_path):
    rows = _rows(3, n=2)
    fig = draw_reconstruction_gallery(rows, channel=1)
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), rows[0].cae_input[1])
    err = ((rows[0].reconstruction - rows[0].cae_input) ** 2).mean(0)  # the score's quantity: every channel
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), err)
    path = plot_reconstruction_gallery(rows, tmp_path / "g" / "gallery.png", "h")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows[1].reconstruction = rows[1].reconstruction[:2]
    with pytest.raises(ValueError, match="row 1"):
        draw_reconstruction_gallery(rows)
    with pytest.raises(ValueError, match="^draw_reconstruction_gallery needs at least one row"):
        plot_reconstruction_gallery([], tmp_path / "empty.png")
