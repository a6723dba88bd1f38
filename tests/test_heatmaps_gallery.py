"""Gallery plot of ID/OOD images with their heatmaps."""
import numpy as np
import pytest
from PIL import Image

from wildcapture.heatmaps import plot_heatmap_gallery


def test_gallery_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    id_imgs = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)) for _ in range(2)]
    ood_imgs = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)]
    out = plot_heatmap_gallery(id_imgs, rng.random((2, 4, 6)), ood_imgs, rng.random((1, 4, 4)),
                               tmp_path / "sub" / "gallery.png", titles=["fox", "deer", "dog"])
    assert out.is_file() and out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_gallery_checks_counts(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="ID heatmaps"):
        plot_heatmap_gallery([img, img], np.zeros((1, 2, 2)), [], np.zeros((0, 2, 2)),
                             tmp_path / "g.png")
    with pytest.raises(ValueError, match="titles"):
        plot_heatmap_gallery([img], np.zeros((1, 2, 2)), [], None, tmp_path / "g.png",
                             titles=["a", "b"])
