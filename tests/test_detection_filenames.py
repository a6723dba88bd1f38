"""detect.py on file names as they are on disk: a backslash in a folder's file name (legal on Linux) is part of
the name, in every output, a resumed run, the exported crops and the review page; a MegaDetector file's
Windows separators (``sub\\img.jpg``) are still read as ``/``."""
import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detect_helpers import interrupted_detect
from wildcapture.detection.review_page import review_folder
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.detection.season import Season, scan
from wildcapture.megadetector import read_md_json, whole_image_batch
from wildcapture.paths import REPO_ROOT

ALL_FLAGGED = -1.0  # a threshold below every CAE error
BACKSLASHED = "a\\b.jpg"  # one file whose name holds a backslash, not a file b.jpg in a folder a
MARKUP = '<b>&"x\\y.png'  # a name that is markup if the page does not escape it


def _options(**changes) -> DetectOptions:
    return DetectOptions(**{"batch_size": 2, "device": "cpu", "workers": 0, **changes})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _image(path: Path, seed: int, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _scored(row: dict[str, str]) -> bool:
    return row["failure"] == "" and np.isfinite(float(row["ood_score"])) and float(row["ood_score"]) > 0


@pytest.fixture
def backslash_folder(tmp_path) -> Path:
    """`photos/` with `a\\b.jpg` (one file), `a/b.jpg` (a file in a subfolder), `a_b.jpg`, `c.png`, `copy.jpg`
    (a byte-for-byte copy of `a\\b.jpg`) and `MARKUP`."""
    folder = tmp_path / "photos"
    _image(folder / MARKUP, 4)
    _image(folder / BACKSLASHED, 0)
    _image(folder / "a" / "b.jpg", 1)
    _image(folder / "a_b.jpg", 2)
    _image(folder / "c.png", 3)
    shutil.copy(folder / BACKSLASHED, folder / "copy.jpg")
    assert (folder / BACKSLASHED).is_file() and len(list(folder.iterdir())) == 6  # a name, not a path
    return folder


def test_a_backslash_in_a_file_name_is_scored_under_its_own_name(tmp_path, tiny_cae):
    folder = tmp_path / "season"
    _image(folder / BACKSLASHED, 0)
    _image(folder / "plain.jpg", 1)
    out = tmp_path / "out" / "d.csv"
    summary = detect(folder, tiny_cae / "cae" / "best.pth", out, _options())
    rows = {r["image"]: r for r in _rows(out)}
    assert sorted(rows) == sorted([BACKSLASHED, "plain.jpg"])
    assert _scored(rows[BACKSLASHED]), rows[BACKSLASHED]["failure"]
    assert (summary.scored, summary.failed) == (2, 0)
    written = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert [image["file"] for image in written["images"]] == [BACKSLASHED, "plain.jpg"]
    assert '"a\\\\b.jpg"' in out.with_suffix(".json").read_text(encoding="utf-8")  # a JSON-escaped backslash


def test_the_command_line_scores_a_backslashed_file_name(tmp_path, tiny_cae):
    folder = tmp_path / "season"
    _image(folder / BACKSLASHED, 0)
    out = tmp_path / "d.csv"
    run = subprocess.run([sys.executable, str(REPO_ROOT / "detect.py"), str(folder), "--cae",
                          str(tiny_cae / "cae" / "best.pth"), "--out", str(out), "--device", "cpu", "--workers", "0",
                          "--no-html"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "1 scored" in run.stdout and "0 failed" in run.stdout, run.stdout
    [row] = _rows(out)
    assert row["image"] == BACKSLASHED and _scored(row)


def test_folder_names_are_kept_and_megadetector_separators_are_read_as_slashes(backslash_folder, tmp_path):
    batch = whole_image_batch(backslash_folder, [BACKSLASHED, "a/b.jpg"])
    assert [image.file for image in batch.images] == [BACKSLASHED, "a/b.jpg"]
    season = Season(backslash_folder, 0.2)
    found = scan(season)  # a\b.jpg and a/b.jpg are two files, not one listed twice
    paths = {item.image: item.path for item in found.items}
    assert paths[BACKSLASHED] == str(backslash_folder / BACKSLASHED)
    assert paths["a/b.jpg"] == str(backslash_folder / "a" / "b.jpg")

    md = tmp_path / "md.json"
    md.write_text(json.dumps({"images": [{"file": "sub\\img.jpg", "detections": [
        {"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]}]}))
    assert [image.file for image in read_md_json(md).images] == ["sub/img.jpg"]
    _image(tmp_path / "sub" / "img.jpg", 5)
    [item] = scan(Season(md, 0.2)).items
    assert (item.image, item.path) == ("sub/img.jpg", str(tmp_path / "sub" / "img.jpg"))


def test_a_megadetector_file_written_on_windows_is_still_resolved(tmp_path, tiny_cae):
    _image(tmp_path / "photos" / "sub" / "img.jpg", 0)
    md = tmp_path / "md.json"
    md.write_text(json.dumps({"info": {"format_version": "1.4"}, "images": [
        {"file": "sub\\img.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]}]}))
    out = tmp_path / "d.csv"
    summary = detect(md, tiny_cae / "cae" / "best.pth", out, _options(image_root=tmp_path / "photos"))
    [row] = _rows(out)
    assert row["image"] == "sub/img.jpg" and _scored(row), row["failure"]
    assert (summary.scored, summary.failed) == (1, 0)
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["images"][0]["file"] == "sub\\img.jpg"  # the entry as read; only the reading resolves it


def _cards(out: Path) -> list[dict]:
    """The flagged cards of the review page's card files (``reviewChunk("all-0000", [...]);``)."""
    cards = []
    for path in sorted(review_folder(out.with_suffix(".html")).glob("cards-*/all-*.js")):
        text = path.read_text(encoding="ascii")  # the card files are ASCII: the backslash JSON-escaped
        cards += json.loads(text[text.index("[") : text.rindex("]") + 1])
    return cards


def test_crops_review_page_and_json_of_backslashed_names(backslash_folder, tmp_path, tiny_cae):
    out, crops = tmp_path / "out" / "d.csv", tmp_path / "crops"
    summary = detect(backslash_folder, tiny_cae / "cae" / "best.pth", out,
                     _options(threshold=ALL_FLAGGED, export_crops=crops))
    names = [MARKUP, "a/b.jpg", BACKSLASHED, "a_b.jpg", "c.png", "copy.jpg"]  # as list_images sorts the paths
    rows = _rows(out)
    assert [r["image"] for r in rows] == names and all(_scored(r) for r in rows)
    assert summary.scored == 6
    score = {r["image"]: float(r["ood_score"]) for r in rows}
    assert score[BACKSLASHED] == pytest.approx(score["copy.jpg"], rel=1e-6)  # the file itself was read
    assert score[BACKSLASHED] != pytest.approx(score["a/b.jpg"], rel=1e-6)

    written = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert [image["file"] for image in written["images"]] == names
    validate = ("import json, sys\n"
                "from megadetector.postprocessing.validate_batch_results import validate_batch_results\n"
                "r = validate_batch_results(sys.argv[1])['validation_results']\n"
                "print(json.dumps([r['errors'], r['warnings']]))\n")
    check = subprocess.run([sys.executable, "-c", validate, str(out.with_suffix(".json"))], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and json.loads(check.stdout) == [[], []], check.stdout + check.stderr[-2000:]

    with open(crops / "manifest.csv", newline="", encoding="utf-8") as handle:
        manifest = {m["source_image"]: m["crop_file"] for m in csv.DictReader(handle)}
    assert sorted(manifest) == sorted(names)
    assert len(set(manifest.values())) == 6  # a\b.jpg and a_b.jpg: one crop each, neither overwritten
    assert sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.jpg")) == sorted(manifest.values())
    assert manifest["a/b.jpg"] == "unknown/a__b__d0.jpg" and manifest[BACKSLASHED] == "unknown/a_b__d0.jpg"
    assert re.fullmatch(r"unknown/a_b-[0-9a-f]{8}__d0\.jpg", manifest["a_b.jpg"])  # the name a\b.jpg's crop took
    assert (crops / manifest[BACKSLASHED]).read_bytes() == (crops / manifest["copy.jpg"]).read_bytes()

    cards = _cards(out)
    assert sorted(card["file"] for card in cards) == sorted(names)
    if shutil.which("chromium"):  # the page shows the name as text, escaped in the DOM (.ci/run installs chromium)
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              f"--user-data-dir={tmp_path / 'profile'}", out.with_suffix(".html").as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
        shown = [(html.unescape(title), html.unescape(text))
                 for title, text in re.findall(r'<div class="file" title="([^"]*)">([^<]*)</div>', dom)]
        assert sorted(shown) == sorted((name, name) for name in names), dom[-3000:]
        assert "<b>" not in dom


def test_a_resumed_run_matches_rows_to_backslashed_files(backslash_folder, tmp_path, tiny_cae, monkeypatch):
    cae, options = tiny_cae / "cae" / "best.pth", _options(checkpoint_every=2)
    detect(backslash_folder, cae, tmp_path / "whole" / "d.csv", options)

    progress = interrupted_detect(backslash_folder, cae, tmp_path / "cut" / "d.csv", options, 3, monkeypatch)
    assert progress["items_done"] == 4  # a\b.jpg was scored before the kill
    detect(backslash_folder, cae, tmp_path / "cut" / "d.csv", options)

    assert (tmp_path / "cut" / "d.csv").read_bytes() == (tmp_path / "whole" / "d.csv").read_bytes()
    rows = {r["image"]: r for r in _rows(tmp_path / "cut" / "d.csv")}
    assert _scored(rows[BACKSLASHED])
    assert float(rows[BACKSLASHED]["ood_score"]) == pytest.approx(float(rows["copy.jpg"]["ood_score"]), rel=1e-6)
