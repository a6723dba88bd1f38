"""PNG + CSV export of heatmaps and the reverse."""
import csv

import numpy as np
import pytest
from PIL import Image

from wildcapture.heatmaps.export import export_heatmap_pngs, read_heatmap_pngs


def _maps(n=4, h=5, w=7, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, h, w)).astype(np.float32) * rng.uniform(0.01, 1.0, (n, 1, 1))
    maps[1] = 0.0  # all-zero map
    return maps


def test_round_trip(tmp_path):
    maps = _maps()
    names = ["a", "b.png", "sub/c", "d"]
    labels = [0, 1, 2, "wolf"]
    csv_path = export_heatmap_pngs(maps, tmp_path / "out", names, labels)
    assert csv_path == tmp_path / "out" / "heatmaps.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "label"]
    assert [r[0] for r in rows[1:]] == ["a.png", "b.png", "sub/c.png", "d.png"]

    for i, rel in enumerate(r[0] for r in rows[1:]):
        im = Image.open(tmp_path / "out" / rel)
        assert im.mode == "L" and im.size == (7, 5)
        arr = np.asarray(im)
        assert arr.max() == (0 if i == 1 else 255)

    back, back_labels = read_heatmap_pngs(csv_path)
    assert back.shape == maps.shape and back.dtype == np.float32
    assert back.min() >= 0 and back.max() <= 1
    peak = maps.max(axis=(1, 2), keepdims=True)
    expected = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    np.testing.assert_allclose(back, expected, atol=1 / 255)
    assert back_labels == labels


def test_csv_relative_to_its_folder_survives_move(tmp_path):
    csv_path = export_heatmap_pngs(_maps(n=2), tmp_path / "x", ["p", "q"], [1, 2])
    moved = tmp_path / "y"
    (tmp_path / "x").rename(moved)
    back, labels = read_heatmap_pngs(moved / "heatmaps.csv")
    assert back.shape == (2, 5, 7) and labels == [1, 2]
    assert not csv_path.exists()


def test_missing_png_error_names_it(tmp_path):
    csv_path = export_heatmap_pngs(_maps(n=3), tmp_path, ["a", "b", "c"], [0, 0, 1])
    (tmp_path / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        read_heatmap_pngs(csv_path)
    (tmp_path / "c.png").write_bytes(b"not a png")
    export_heatmap_pngs(_maps(n=2), tmp_path / "z", ["a", "c"], [0, 1])
    (tmp_path / "z" / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="c.png"):
        read_heatmap_pngs(tmp_path / "z" / "heatmaps.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_heatmap_pngs(tmp_path / "nope.csv")


def test_bad_input_rejected(tmp_path):
    maps = _maps(n=2)
    with pytest.raises(ValueError, match="names"):
        export_heatmap_pngs(maps, tmp_path, ["a"], [0, 1])
    with pytest.raises(ValueError, match="duplicate"):
        export_heatmap_pngs(maps, tmp_path, ["a", "a.png"], [0, 1])
    with pytest.raises(ValueError, match="negative"):
        export_heatmap_pngs(-maps - 1, tmp_path, ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match=r"\.\."):
        export_heatmap_pngs(maps, tmp_path, ["../a", "b"], [0, 1])
    assert not (tmp_path / "heatmaps.csv").exists()


def test_single_channel_csv_and_pngs_are_the_papers_format(tmp_path):
    maps = np.array([[[0.0, 0.5], [0.25, 1.0]], [[2.0, 0.0], [0.0, 0.0]]], np.float32)
    csv_path = export_heatmap_pngs(maps, tmp_path, ["a", "b"], [3, "x,y"])
    assert csv_path.read_bytes() == b'img,label\r\na.png,3\r\nb.png,"x,y"\r\n'
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), [[0, 128], [64, 255]])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), [[255, 0], [0, 0]])


@pytest.mark.parametrize("channels", [1, 12])
def test_multichannel_round_trip(tmp_path, channels):
    rng = np.random.default_rng(channels)
    maps = rng.random((3, channels, 4, 5)).astype(np.float32) * rng.uniform(0.1, 1.0, (3, channels, 1, 1))
    maps[1] = 0.0
    csv_path = export_heatmap_pngs(maps, tmp_path, ["a", "b", "c"], [0, 1, "wolf"])
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["img", "label", "channels"]] + [[n, lab, str(channels)] for n, lab in
                                                     (("a.png", "0"), ("b.png", "1"), ("c.png", "wolf"))]
    png = np.asarray(Image.open(tmp_path / "a.png"))
    assert png.shape == (channels * 4, 5)  # channels stacked top to bottom
    np.testing.assert_array_equal(png[4 * (channels - 1):], np.rint(maps[0, -1] / maps[0].max() * 255))

    back, labels = read_heatmap_pngs(csv_path)
    assert back.shape == maps.shape and back.dtype == np.float32 and labels == [0, 1, "wolf"]
    peak = maps.max(axis=(1, 2, 3), keepdims=True)  # one scale per image: channels keep their relative levels
    expected = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    np.testing.assert_allclose(back, expected, atol=0.5 / 255 + 1e-7)


def test_bad_channels_column(tmp_path):
    csv_path = export_heatmap_pngs(np.ones((1, 3, 2, 2)), tmp_path, ["a"], [0])
    for bad in ("4", "0", "x"):  # the PNG is 6 rows high
        csv_path.write_text(f"img,label,channels\na.png,0,{bad}\n")
        with pytest.raises(ValueError, match="line 2.*channels must be a whole number"):
            read_heatmap_pngs(csv_path)
    csv_path.write_text("img,label,channels\na.png,0\n")
    with pytest.raises(ValueError, match="expected 3 columns"):
        read_heatmap_pngs(csv_path)
    csv_path.write_text("img,label,extra\na.png,0,1\n")
    with pytest.raises(ValueError, match="header"):
        read_heatmap_pngs(csv_path)
