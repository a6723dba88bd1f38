"""Checking every image before training: all bad files in one report, file sources only, decoded once."""
import io
import multiprocessing

import numpy as np
import pytest
from PIL import Image, ImageFile

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError
from wildcapture.data import verify
from wildcapture.data.images import FileImages, load_rgb
from wildcapture.data.splits import DataSplits, ImageSplit
from wildcapture.data.verify import BadImage, find_unreadable, probe_image, verify_split_images


def _jpeg_bytes(width: int, height: int, seed: int = 0, progressive: bool = False, exif=None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, progressive=progressive, exif=exif or b"")
    return buffer.getvalue()


def _benchmark(splits: dict[str, list[str]]) -> DataSplits:
    loader = FileImages()
    return DataSplits("files", ["a"], ["b"], {
        name: ImageSplit(sources, [0] * len(sources), ["a"] * len(sources), loader) for name, sources in splits.items()})


@pytest.fixture
def files(tmp_path):
    """A benchmark mixing good and bad files and crops, and the exact set of its bad (split, source) items."""
    p = {name: str(tmp_path / name) for name in
         ("good.jpg", "good.png", "rotated.jpg", "truncated.jpg", "empty.jpg", "text.jpg", "missing.jpg")}
    (tmp_path / "good.jpg").write_bytes(_jpeg_bytes(64, 48))
    Image.new("RGB", (20, 10), (200, 30, 0)).save(p["good.png"])
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 64x32 stored, 32x64 displayed
    (tmp_path / "rotated.jpg").write_bytes(_jpeg_bytes(64, 32, exif=exif.tobytes()))
    (tmp_path / "truncated.jpg").write_bytes(_jpeg_bytes(64, 48, seed=1)[:-300])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image\n")
    extra = []
    for i in range(12):  # enough files for two worker processes
        (tmp_path / f"extra{i}.png").write_bytes((tmp_path / "good.png").read_bytes())
        extra.append(str(tmp_path / f"extra{i}.png"))
    splits = {
        "train_id": [p["good.jpg"], p["good.png"], p["truncated.jpg"], p["good.jpg"] + "#box=0,0,10,10",
                     p["good.jpg"] + "#box=60,40,90,90",  # partly outside: clipped, fine
                     p["good.jpg"] + "#box=64,0,80,10"],  # wholly outside the 64x48 image
        "val_id": [p["empty.jpg"], p["rotated.jpg"] + "#box=0,40,10,60", p["rotated.jpg"] + "#box=40,0,50,10"],
        "test_id": [p["text.jpg"], p["missing.jpg"]] + extra,
        "ood_heldout": [p["truncated.jpg"] + "#box=0,0,5,5", p["good.png"] + "#box=5,5,15,10"],
    }
    bad = {("train_id", p["truncated.jpg"]), ("train_id", p["good.jpg"] + "#box=64,0,80,10"),
           ("val_id", p["empty.jpg"]), ("val_id", p["rotated.jpg"] + "#box=40,0,50,10"),
           ("test_id", p["text.jpg"]), ("test_id", p["missing.jpg"]),
           ("ood_heldout", p["truncated.jpg"] + "#box=0,0,5,5")}
    return _benchmark(splits), bad


def test_every_bad_item_reported_at_once_with_its_reason(files):
    bench, expected = files
    bad = find_unreadable(bench, workers=1, progress=False)
    assert {(b.split, b.source) for b in bad} == expected
    assert [b.split for b in bad] == sorted((b.split for b in bad), key=list(bench.splits).index)  # split order
    reasons = {b.source.rsplit("/", 1)[1]: b.reason for b in bad}
    assert reasons["truncated.jpg"].startswith("image file is truncated")
    assert reasons["truncated.jpg#box=0,0,5,5"] == reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["text.jpg"] == "not an image file PIL can identify"
    assert reasons["missing.jpg"] == "file not found"
    assert reasons["good.jpg#box=64,0,80,10"] == "crop box (64, 0, 80, 10) lies outside the 64x48 image"
    assert reasons["rotated.jpg#box=40,0,50,10"] == "crop box (40, 0, 50, 10) lies outside the 32x64 image"


def test_report_matches_what_the_loader_fails_on(files):
    bench, expected = files
    failing = set()
    for name, split in bench.splits.items():
        for i, source in enumerate(split.sources):
            try:
                split.load_image(i)
            except DatasetError:
                failing.add((name, source))
    assert failing == expected


def test_each_file_decoded_once(files, monkeypatch):
    bench, _ = files
    calls = []
    monkeypatch.setattr(verify, "probe_image", lambda path: calls.append(path) or probe_image(path))
    find_unreadable(bench, workers=1, progress=False)
    assert sorted(calls) == sorted({s.split("#")[0] for split in bench.splits.values() for s in split.sources})


def test_parallel_run_equals_in_process_run(files, monkeypatch):
    bench, _ = files
    pools = []
    monkeypatch.setattr(verify, "Pool", lambda n: pools.append(n) or multiprocessing.Pool(n))
    in_process = find_unreadable(bench, workers=1, progress=False)
    assert pools == []
    assert find_unreadable(bench, workers=2, progress=False) == in_process
    assert pools == [2]


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_detected_despite_draft_decoding(tmp_path, progressive):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing in the package loads truncated files silently
    data = _jpeg_bytes(256, 128, progressive=progressive)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    assert probe_image(str(path)) == (256, 128)
    for cut in range(1, 65):  # the 1/8-scale decode fails exactly where the full decode of the loader fails
        path.write_bytes(data[:-cut])
        try:
            load_rgb(path)
            loads = True
        except DatasetError:
            loads = False
        assert isinstance(probe_image(str(path)), tuple) == loads, cut
    for cut in (64, len(data) // 2):
        path.write_bytes(data[:-cut])
        assert probe_image(str(path)).startswith("image file is truncated")


def test_error_lists_every_bad_item_under_a_self_contained_first_line(files, monkeypatch):
    bench, expected = files
    with pytest.raises(DatasetError) as caught:
        verify_split_images(bench, workers=1, progress=False)
    first, *rest = str(caught.value).splitlines()
    assert first.startswith("7 of 25 items (images or crops) of data set 'files' cannot be loaded;")
    assert "replace or delete" in first and "data.verify_images=false" in first
    assert {tuple(line.strip().split(": ")[:2]) for line in rest} == expected
    monkeypatch.setattr(verify, "MAX_LISTED", 3)
    with pytest.raises(DatasetError) as caught:
        verify_split_images(bench, workers=1, progress=False)
    assert str(caught.value).splitlines()[1:] == [f"  {b.split}: {b.source}: {b.reason}" for b in
                                                  find_unreadable(bench, 1, False)[:3]] + ["  ... and 4 more"]


def test_array_benchmark_decodes_nothing(monkeypatch):
    bench = build_splits({"name": "digits"})
    monkeypatch.setattr(verify, "probe_image", lambda path: pytest.fail(f"decoded {path}"))
    assert find_unreadable(bench, progress=False) == []
    verify_split_images(bench, progress=False)


def test_imagefolder_benchmark(tmp_path):
    for name, n in {"cats": 4, "dogs": 4, "birds": 2}.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.jpg").write_bytes(_jpeg_bytes(16, 16, seed=i))
    cfg = {"name": "imagefolder", "root": str(tmp_path), "id_classes": ["cats", "dogs"],
           "test_fraction": 0.25, "val_fraction": 0.34}
    verify_split_images(build_splits(cfg), progress=False)
    (tmp_path / "birds" / "1.jpg").write_bytes(b"\xff\xd8\xff")  # a JPEG header and nothing else
    assert find_unreadable(build_splits(cfg), progress=False) == [
        BadImage("ood_heldout", str(tmp_path / "birds" / "1.jpg"), "not an image file PIL can identify")]


def test_a_damaged_exif_block_is_a_reported_failure_like_in_the_loader():
    from wildcapture.data.images import load_rgb
    from wildcapture.data.images import load_rgb_at_least
    from wildcapture.data.verify import probe_image
    from wildcapture.errors import DatasetError
    from wildcapture.paths import REPO_ROOT

    path = REPO_ROOT / "tests" / "fixtures" / "bad_exif.jpg"  # PIL raises struct.error applying its EXIF
    for load in (lambda: load_rgb(path), lambda: load_rgb_at_least(path, None, 16)):
        with pytest.raises(DatasetError, match=f"cannot read image {path}"):
            load()
    assert isinstance(probe_image(str(path)), str)  # the pre-training check reports it too
