"""Review page: thumbnails (crop size, red box, attention overlay), the unflagged sample, and the page itself,
opened in headless Chromium (pagination, class filter, every referenced file on disk, no external URL)."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wildcapture.data.transforms import centre_crop_box
from wildcapture.detection.review_assets import (asset_names, fit_size, has_review_assets, review_folder,
                                                 write_review_assets)
from wildcapture.detection.review_sample import UnflaggedSample
from wildcapture.errors import DatasetError
from wildcapture.megadetector import pixel_box

BOX = (0.25, 0.2, 0.5, 0.5)  # normalised x, y, w, h
HEATMAP = np.add.outer(np.arange(14.0), np.arange(14.0))  # a smooth ramp: every cell a different colour


def _grey(path: Path, size=(640, 480)) -> Path:
    """Write a grey image with a soft horizontal ramp (no red anywhere) to `path`; return it."""
    ramp = np.linspace(90, 160, size[0], dtype=np.float32)[None, :, None].repeat(size[1], 0).repeat(3, 2)
    Image.fromarray(ramp.astype(np.uint8)).save(path, quality=95)
    return path


def _red(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)


def _load(folder: Path, item: int, kind: str) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{item:06d}-{kind}.jpg").convert("RGB"))


@pytest.mark.parametrize("size, suffix", [((640, 480), ".png"), ((2048, 1152), ".jpg")])
def test_assets_crop_size_red_box_and_overlay(tmp_path, size, suffix):
    image = _grey(tmp_path / f"frame{suffix}", size)
    folder = tmp_path / "X_review"
    write_review_assets(folder, 7, str(image), BOX, 0.1, HEATMAP, (224, 224))
    assert sorted(p.name for p in folder.iterdir()) == ["000007-attention.jpg", "000007-crop.jpg", "000007-full.jpg"]
    x0, y0, x1, y1 = pixel_box(BOX, size, 0.1)
    crop, attention, full = (_load(folder, 7, kind) for kind in ("crop", "attention", "full"))
    assert (crop.shape[1], crop.shape[0]) == fit_size((x1 - x0, y1 - y0), 200)
    if size == (640, 480):
        assert crop.shape[:2] == (150, 200)  # box + margin 384 x 288 px, long side to 200
    assert (full.shape[1], full.shape[0]) == fit_size(size, 800)
    scale = full.shape[1] / size[0]
    bx0, by0, bx1, by1 = (round(v * scale) for v in pixel_box(BOX, size))
    assert _red(full[by0 + 5:by1 - 5, bx0]).all() and _red(full[by0 + 5:by1 - 5, bx1 - 1]).all()
    assert _red(full[by0, bx0 + 5:bx1 - 5]).all() and _red(full[by1 - 1, bx0 + 5:bx1 - 5]).all()
    assert _red(full).mean() < 0.05 and not _red(full[by0 + 10:by1 - 10, bx0 + 10:bx1 - 10]).any()

    diff = np.abs(attention.astype(int) - crop.astype(int)).sum(axis=2)
    cx0, cy0, cx1, cy1 = (round(v * crop.shape[1] / (x1 - x0)) for v in centre_crop_box(x1 - x0, y1 - y0, (224, 224)))
    assert diff[cy0 + 3:cy1 - 3, cx0 + 3:cx1 - 3].mean() > 60  # the map, blended at alpha 0.5
    outside = np.concatenate([diff[:, :cx0 - 2].ravel(), diff[:, cx1 + 2:].ravel()])
    assert outside.size and outside.mean() < 10  # only JPEG noise where the model did not look


def test_assets_whole_image_exif_and_names(tmp_path):
    image = Image.fromarray(np.full((300, 1000, 3), 120, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 300 x 1000
    image.save(tmp_path / "rotated.jpg", exif=exif)
    folder = review_folder(tmp_path / "season.html")
    write_review_assets(folder, 123, str(tmp_path / "rotated.jpg"), None, 0.1, HEATMAP[None], (224, 224))
    assert folder == tmp_path / "season_review" and has_review_assets(folder, 123)
    assert not has_review_assets(folder, 124)
    assert Image.open(folder / "000123-crop.jpg").size == (60, 200)
    full = _load(folder, 123, "full")
    assert (full.shape[1], full.shape[0]) == (240, 800) and not _red(full).any()  # whole image: no box
    assert asset_names(123, tmp_path / "season.html") == {
        "crop": "season_review/000123-crop.jpg", "attention": "season_review/000123-attention.jpg",
        "full": "season_review/000123-full.jpg"}


def test_assets_unreadable_image_is_a_dataset_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    for path in (tmp_path / "broken.jpg", tmp_path / "missing.jpg"):
        with pytest.raises(DatasetError, match=re.escape(str(path))):
            write_review_assets(tmp_path / "r", 0, str(path), BOX, 0.0, HEATMAP, (224, 224))
    assert not (tmp_path / "r").exists()  # nothing written


def test_unflagged_sample_is_seeded_and_order_independent():
    n = 1000
    one = UnflaggedSample(20, seed=3, n_items=n)
    for item in range(n):
        if one.wants(item):
            one.offer(item, f"card {item}")
    shards = [UnflaggedSample(20, seed=3, n_items=n) for _ in range(2)]
    for item in reversed(range(n)):
        shards[item % 2].offer(item, f"card {item}")
    merged = UnflaggedSample(20, seed=3, n_items=n)
    for shard in shards:
        for value in shard.values():
            merged.offer(int(value.split()[1]), value)
    assert len(one.values()) == 20 and one.values() == merged.values()
    other = UnflaggedSample(20, seed=4, n_items=n)
    for item in range(n):
        other.offer(item, f"card {item}")
    assert other.values() != one.values()
    assert 40 < sum(one.wants(i) for i in range(n)) < 120  # about 4 x 20 candidates
    assert UnflaggedSample(0, 3, n).values() == [] and not UnflaggedSample(0, 3, n).wants(1)
