"""detect.py's decision as users see it: the unknown category in X.json (checked by MegaDetector's own
validator), the review page in a real browser, crops exported for labelling, and bad input that costs
one row, not the season."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wildcapture.data.images import load_rgb
from wildcapture.detection.run import DetectOptions, default_workers, detect
from wildcapture.errors import ConfigError, DatasetError
from wildcapture.megadetector import pixel_box
from wildcapture.storage import load_checkpoint

ALL_FLAGGED, NONE_FLAGGED = -1.0, 1e9  # thresholds below and above every CAE error


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _image(path: Path, seed: int, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _box(x, y, w, h, conf, category="1"):
    return {"category": category, "conf": conf, "bbox": [x, y, w, h]}


@pytest.fixture
def season(tmp_path) -> Path:
    """Five PNGs in `photos/` and a MegaDetector file beside the folder: three animal boxes, a box that leaves
    the image (x + w = 1.4), a confidence that is not a number, an empty image and MegaDetector's failure."""
    for seed, name in enumerate(("a.png", "b.png", "c.png", "d.png", "e.png")):
        _image(tmp_path / "photos" / name, seed)
    document = {"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
                "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
                "images": [{"file": "a.png", "detections": [_box(0.1, 0.1, 0.5, 0.6, 0.91),
                                                            _box(0.6, 0.1, 0.8, 0.2, 0.9),
                                                            _box(0.2, 0.2, 0.3, 0.3, "high")]},
                           {"file": "b.png", "detections": [_box(0.0, 0.0, 1.0, 1.0, 0.8)]},
                           {"file": "c.png", "detections": []},
                           {"file": "d.png", "failure": "Failure image access", "detections": None},
                           {"file": "e.png", "detections": [_box(0.3, 0.2, 0.4, 0.5, 0.6)]}]}
    path = tmp_path / "md.json"
    path.write_text(json.dumps(document))
    return path


def _options(**changes) -> DetectOptions:
    return DetectOptions(**{"batch_size": 2, "device": "cpu", "workers": 0, **changes})


# MegaDetector's validator runs in its own process: importing its package sets PIL's LOAD_TRUNCATED_IMAGES
VALIDATE = ("import json, sys\n"
            "from megadetector.postprocessing.validate_batch_results import validate_batch_results\n"
            "results = [validate_batch_results(path)['validation_results'] for path in sys.argv[1:]]\n"
            "print(json.dumps([(r['errors'], r['warnings']) for r in results]))\n")


def _valid(*paths: Path) -> None:
    """Assert that MegaDetector's own validator finds no error and no warning in each file."""
    run = subprocess.run([sys.executable, "-c", VALIDATE, *map(str, paths)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == [[[], []]] * len(paths), run.stdout


def test_a_malformed_detection_is_a_failure_row_and_its_neighbours_are_scored(season, tiny_cae, tmp_path):
    out = tmp_path / "out" / "d.csv"
    summary = detect(season, tiny_cae / "cae" / "best.pth", out, _options(image_root=season.parent / "photos"))
    rows = _rows(out)
    assert [(r["image"], r["failure"] == "") for r in rows] == [
        ("a.png", True), ("a.png", False), ("a.png", False), ("b.png", True), ("c.png", False), ("d.png", False),
        ("e.png", True)]
    assert "detections[1]: 'bbox' must be 4 numbers" in rows[1]["failure"] and "[0.6, 0.1, 0.8, 0.2]" in rows[1]["failure"]
    assert rows[2]["failure"] == "detections[2]: 'conf' must be a number, got 'high'"
    assert (summary.scored, summary.failed, summary.empty) == (3, 3, 1)
    written = json.loads(out.with_suffix(".json").read_text())
    assert [d["bbox"] for d in written["images"][0]["detections"]] == [[0.1, 0.1, 0.5, 0.6]]  # malformed: left out
    _valid(out.with_suffix(".json"))


def test_a_wrong_image_root_is_one_error_and_writes_nothing(season, tiny_cae, tmp_path):
    out = tmp_path / "out" / "d.csv"
    with pytest.raises(ConfigError, match=r"none of the first 4 images .* exists under the image root .*--image-root"):
        detect(season, tiny_cae / "cae" / "best.pth", out, _options())  # the photos are in photos/, not beside it
    assert not out.parent.exists()
    (tmp_path / "list.json").write_text(json.dumps([{"file": "a.png"}]))
    with pytest.raises(DatasetError, match="needs an 'images' list"):  # not a MegaDetector file: refused at once
        detect(tmp_path / "list.json", tiny_cae / "cae" / "best.pth", out, _options())


@pytest.mark.parametrize("threshold", [None, ALL_FLAGGED, NONE_FLAGGED], ids=["stored", "all-flagged", "none"])
def test_flagged_detections_are_unknown_first_and_megadetector_accepts_the_file(season, tiny_cae, tmp_path,
                                                                               threshold):
    cae = tiny_cae / "cae" / "best.pth"
    val_scores = load_checkpoint(cae)["val_scores"].numpy()
    written_files = []
    for source, root in ((season, season.parent / "photos"), (season.parent / "photos", None)):
        out = tmp_path / source.stem / "d.csv"
        detect(source, cae, out, _options(threshold=threshold, image_root=root, unknown_label="new species"))
        written_files.append(out.with_suffix(".json"))
        written = json.loads(out.with_suffix(".json").read_text())
        unknown = [k for k, name in written["classification_categories"].items() if name == "new species"]
        assert len(unknown) == 1
        scored = [r for r in _rows(out) if not r["failure"]]
        dets = [d for image in written["images"] for d in image.get("detections") or [] if "ood_score" in d]
        assert len(dets) == len(scored) > 0
        for det, row in zip(dets, scored):
            assert det["ood_flag"] == (row["ood_flag"] == "True")
            assert (det["classifications"][0][0] == unknown[0]) == det["ood_flag"]
            assert row["label"] == ("new species" if det["ood_flag"] else row["predicted_class"])
            assert float(row["unknown_confidence"]) == (val_scores < float(row["ood_score"])).mean()
    _valid(*written_files)  # folder and JSON input
    pairs = sorted((float(r["ood_score"]), float(r["unknown_confidence"])) for r in scored)
    assert all(a[1] <= b[1] for a, b in zip(pairs, pairs[1:]))  # monotone in the score


def test_export_crops_writes_the_flagged_crops_at_full_resolution(season, tiny_cae, tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]  # a smooth image: JPEG keeps it close, unlike noise
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(season.parent / "photos" / "e.png")
    crops = tmp_path / "crops"
    detect(season, tiny_cae / "cae" / "best.pth", tmp_path / "d.csv",
           _options(threshold=ALL_FLAGGED, image_root=season.parent / "photos", export_crops=crops, crop_margin=0.1))
    with open(crops / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert sorted(m["crop_file"] for m in manifest) == ["unknown/a__d0.jpg", "unknown/b__d0.jpg", "unknown/e__d0.jpg"]
    assert sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.jpg")) == sorted(
        m["crop_file"] for m in manifest)
    entry = next(m for m in manifest if m["source_image"] == "e.png")
    full = load_rgb(season.parent / "photos" / "e.png")
    expected = np.asarray(full.crop(pixel_box(tuple(json.loads(entry["bbox"])), full.size, 0.1)), dtype=np.float64)
    exported = np.asarray(Image.open(crops / entry["crop_file"]), dtype=np.float64)
    assert exported.shape == expected.shape and np.abs(exported - expected).max() < 8

    none = tmp_path / "none"
    detect(season, tiny_cae / "cae" / "best.pth", tmp_path / "n.csv",
           _options(threshold=NONE_FLAGGED, image_root=season.parent / "photos", export_crops=none, export_all=True))
    assert sorted(p.parent.name for p in none.rglob("*.jpg")) != [] and not (none / "unknown").exists()


def test_default_workers_leave_one_cpu_to_the_model(monkeypatch):
    from wildcapture.detection import run

    for cpus, workers in ((1, 0), (2, 1), (4, 3), (32, 8)):
        monkeypatch.setattr(run, "available_cpus", lambda: cpus)
        assert default_workers() == workers


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_review_page_shows_each_flagged_detection_in_score_order(season, tiny_cae, tmp_path):
    out = tmp_path / "d.csv"
    detect(season, tiny_cae / "cae" / "best.pth", out, _options(threshold=ALL_FLAGGED, image_root=season.parent / "photos"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"--user-data-dir={tmp_path / 'profile'}",
                          out.with_suffix(".html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    flagged = re.findall(r'<[^>]*class="card flagged"[^>]*>', dom)
    assert re.search(r'class="card unflagged"', dom) is None  # every detection is flagged: no contrast sample
    scores = [float(re.search(r'data-score="([^"]+)"', c).group(1)) for c in flagged]
    expected = sorted((float(r["ood_score"]) for r in _rows(out) if not r["failure"]), reverse=True)
    assert scores == pytest.approx(expected, rel=1e-5)
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', dom):
        if not ref.startswith(("javascript:", "data:")):
            assert (out.parent / ref).exists(), ref


def test_the_validator_harness_catches_a_file_megadetector_rejects(tmp_path):
    bad = tmp_path / "bad.json"  # an integer confidence: MegaDetector's validator requires a float
    bad.write_text(json.dumps({"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"},
                               "images": [{"file": "a.jpg", "detections": [_box(0.1, 0.1, 0.2, 0.2, 1)]}]}))
    with pytest.raises(AssertionError, match="illegal confidence"):
        _valid(bad)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".incomplete" not in p.as_posix()}


def test_a_disk_full_while_finishing_leaves_the_previous_outputs_as_they_were(season, tiny_cae, tmp_path, monkeypatch):
    import errno

    from wildcapture.detection import review

    out = tmp_path / "out" / "d.csv"
    options = _options(threshold=ALL_FLAGGED, image_root=season.parent / "photos")
    detect(season, tiny_cae / "cae" / "best.pth", out, options)
    before = _snapshot(out.parent)
    assert {"d.csv", "d.json", "d.html"} <= set(before) and any(k.startswith("d_review/") for k in before)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out.parent))

    monkeypatch.setattr(review, "write_review_page", full)
    with pytest.raises(OSError, match="No space left"):
        detect(season, tiny_cae / "cae" / "best.pth", out, _options(threshold=NONE_FLAGGED,
                                                                    image_root=season.parent / "photos"))
    assert _snapshot(out.parent) == before
