"""MegaDetector batch output: reading and checking, pixel boxes, writing our results, training on its boxes."""
import copy
import json

import pytest
from PIL import Image

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError
from wildcapture.megadetector import (WHOLE_IMAGE_DETECTOR, DetectionResult, MDDetection, MDWriter, pixel_box,
                                      read_md_json, whole_image_batch)
from wildcapture.storage import atomic_write


def write_md_json(path, batch, results, class_names, extra_info, failures=None):
    """Write `batch` with `results` (in image order) through `MDWriter`, as detect's report does."""
    by_image = {}
    for r in results:
        by_image.setdefault(r.image, []).append(r)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            writer = MDWriter(handle, batch.document, class_names, extra_info)
            for i, raw in enumerate(batch.raw_images):
                writer.add(raw, by_image.get(i, []), (failures or {}).get(i))
            writer.close()

    atomic_write(path, write)

CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


def _det(category, conf, bbox, **extra):
    return {"category": category, "conf": conf, "bbox": bbox, **extra}


def _md(images, **top):
    return {"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt",
                     "detector_metadata": {"typical_detection_threshold": 0.2}},
            "detection_categories": CATEGORIES, **top, "images": images}


SEASON = _md([
    {"file": "site1/a.jpg", "detections": [
        _det("1", 0.93, [0.1, 0.2, 0.3, 0.4]),
        _det("1", 0.1, [0.5, 0.5, 0.2, 0.2]),  # below the threshold
        _det("2", 0.95, [0.0, 0.0, 0.5, 0.5]),  # a person
        _det("1", 0.2, [-0.0004, 0.6, 0.3, 0.4003])]},  # at the threshold; a hair outside: clipped
    {"file": "site1\\b.jpg", "detections": []},  # empty shot; Windows separator
    {"file": "site2/c.jpg", "failure": "File not found", "detections": None},
])


def _write_json(path, document):
    path.write_text(json.dumps(document))
    return path


def test_read_keeps_animals_at_or_above_threshold(tmp_path):
    batch = read_md_json(_write_json(tmp_path / "md.json", SEASON))
    assert [(im.file, im.failure) for im in batch.images] == [
        ("site1/a.jpg", None), ("site1/b.jpg", None), ("site2/c.jpg", "File not found")]
    first = batch.images[0].detections
    assert first[0] == MDDetection(0, (0.1, 0.2, 0.3, 0.4), 0.93)
    assert [d.index for d in first] == [0, 3] and first[1].conf == 0.2
    assert first[1].bbox[0] == 0.0 and first[1].bbox[2] == pytest.approx(0.2996)
    assert first[1].bbox[1] == 0.6 and first[1].bbox[3] == pytest.approx(0.4)
    assert batch.images[1].detections == () and batch.images[2].detections == ()
    lower = read_md_json(tmp_path / "md.json", threshold=0.05)
    assert [d.index for d in lower.images[0].detections] == [0, 1, 3]


def test_animal_category_by_name_and_old_files(tmp_path):
    renamed = {"images": [{"file": "x.jpg", "detections": [_det("1", 0.9, [0, 0, 1, 1]),
                                                             _det("5", 0.9, [0, 0, 1, 1])]}],
               "detection_categories": {"1": "person", "5": "Animal"}}
    assert [d.index for d in read_md_json(_write_json(tmp_path / "r.json", renamed)).images[0].detections] == [1]
    old = {"images": [{"file": "x.jpg", "detections": [_det("1", 0.9, [0, 0, 1, 1])]}]}  # no info, no categories
    batch = read_md_json(_write_json(tmp_path / "old.json", old))
    assert len(batch.images[0].detections) == 1 and batch.detection_categories == CATEGORIES


def test_pixel_box_rounding_margin_and_clipping():
    # x: floor(0.1*10)=1, ceil(0.4*10)=4; y: floor(0.2*20)=4, (0.2+0.4)*20 = 12.000000000000002 -> 12, not 13
    assert pixel_box((0.1, 0.2, 0.3, 0.4), (10, 20)) == (1, 4, 4, 12)
    # x: floor(25.25)=25, ceil(75.75)=76; y: floor(25.0)=25, ceil(37.5)=38
    assert pixel_box((0.25, 0.5, 0.5, 0.25), (101, 50)) == (25, 25, 76, 38)
    # margin 0.1 of the box on each side: x 0.2..0.8 of 100, y 0.475..0.775 of 40
    assert pixel_box((0.25, 0.5, 0.5, 0.25), (100, 40), margin=0.1) == (20, 19, 80, 31)
    # margin 0.5 pushes x to -0.1 and y to 1.05: clipped to the 10x10 image
    assert pixel_box((0.0, 0.9, 0.2, 0.1), (10, 10), margin=0.5) == (0, 8, 3, 10)
    assert pixel_box((0.9995, 0.0, 0.0001, 0.0001), (10, 10)) == (9, 0, 10, 1)  # keeps at least one pixel
    with pytest.raises(ValueError, match="margin"):
        pixel_box((0.1, 0.1, 0.5, 0.5), (10, 10), margin=-0.1)


def _results(rows):
    return [DetectionResult(*row) for row in rows]


def test_writer_round_trip(tmp_path):
    season = copy.deepcopy(SEASON)
    season["classification_categories"] = {"7": "elk"}  # another classifier's results: replaced by ours
    season["images"][0]["detections"][2]["classifications"] = [["7", 0.8]]
    season["images"][0]["detections"][0]["ood_score"] = 9.0
    batch = read_md_json(_write_json(tmp_path / "md.json", season))
    results = _results([(0, 3, [0.1, 0.7, 0.2], 0.05, False), (0, 0, [0.6, 0.1, 0.3], 1.5, True)])
    extra = {"classifier": "wildcapture vit_small + CAE", "classifier_metadata": {"ood_threshold": 1.0}}
    out = tmp_path / "out" / "scored.json"
    write_md_json(out, batch, results, ["Red Fox", "Red Deer", "Wild Boar"], extra)

    written = json.loads(out.read_text())
    assert written["info"] == {**SEASON["info"], **extra}
    assert written["detection_categories"] == CATEGORIES
    assert written["classification_categories"] == {"0": "Red Fox", "1": "Red Deer", "2": "Wild Boar"}
    assert [im["file"] for im in written["images"]] == [im["file"] for im in SEASON["images"]]
    assert written["images"][1:] == SEASON["images"][1:]  # empty and failed images as read
    dets = written["images"][0]["detections"]
    assert dets[1:3] == SEASON["images"][0]["detections"][1:3]  # unscored: as read, foreign fields dropped
    assert dets[0] == {**SEASON["images"][0]["detections"][0],
                       "classifications": [["0", 0.6], ["2", 0.3], ["1", 0.1]], "ood_score": 1.5, "ood_flag": True}
    assert dets[3]["classifications"] == [["1", 0.7], ["2", 0.2], ["0", 0.1]]
    assert dets[3]["ood_score"] == 0.05 and dets[3]["ood_flag"] is False
    again = read_md_json(out)
    assert again.images == batch.images
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_writer_rejects_results_that_do_not_fit(tmp_path):
    batch = read_md_json(_write_json(tmp_path / "md.json", SEASON))
    names = ["a", "b"]
    for rows, words in [([(2, 0, [0.5, 0.5], 0.1, False)], "names no detection"),  # a failed image
                        ([(0, 4, [0.5, 0.5], 0.1, False)], "names no detection"),
                        ([(0, 0, [1.0], 0.1, False)], "2 class probabilities"),
                        ([(0, 0, [0.5, 0.5], float("nan"), False)], "finite"),
                        ([(0, 0, [0.5, 0.5], 0.1, False)] * 2, "twice")]:
        with pytest.raises(ValueError, match=words):
            write_md_json(tmp_path / "out.json", batch, _results(rows), names, {})
    assert not (tmp_path / "out.json").exists()


def test_folder_input_whole_images_and_read_failures(tmp_path):
    batch = whole_image_batch(tmp_path, ["cats/1.jpg", "cats/2.jpg", "dogs/3.jpg"])
    assert all(im.detections == (MDDetection(0, (0.0, 0.0, 1.0, 1.0), 1.0),) for im in batch.images)
    out = tmp_path / "scored.json"
    write_md_json(out, batch, _results([(0, 0, [0.9, 0.1], 0.2, False), (2, 0, [0.3, 0.7], 3.0, True)]),
                  ["cat", "dog"], {"classifier": "wildcapture"}, failures={1: "cannot read image: truncated"})
    written = json.loads(out.read_text())
    assert written["info"] == {"format_version": "1.4", "detector": WHOLE_IMAGE_DETECTOR, "classifier": "wildcapture"}
    first, failed, last = written["images"]
    assert first == {"file": "cats/1.jpg", "detections": [
        {"category": "1", "conf": 1.0, "bbox": [0.0, 0.0, 1.0, 1.0], "classifications": [["0", 0.9], ["1", 0.1]],
         "ood_score": 0.2, "ood_flag": False}]}
    assert failed == {"file": "cats/2.jpg", "failure": "cannot read image: truncated", "detections": None}
    assert last["detections"][0]["classifications"][0] == ["1", 0.7]
    assert [im.failure for im in read_md_json(out).images] == [None, "cannot read image: truncated", None]


BAD_FILES = [
    ("{not json", "not a readable JSON"),
    ("[1, 2]", "'images' list"),
    (json.dumps({"info": {}}), "'images' list"),
    (json.dumps(_md([{"detections": []}])), "images[0]: needs a 'file'"),
    (json.dumps(_md([{"file": "a.jpg"}])), "images[0] (a.jpg): needs a 'detections' list"),
    (json.dumps(_md([{"file": "a.jpg", "detections": [_det("1", 0.9, [0.1, 0.1, 0.2])]}])), "'bbox' must be 4"),
    (json.dumps(_md([{"file": "a.jpg", "detections": [_det("1", 0.9, [10, 20, 300, 200])]}])), "normalised"),
    (json.dumps(_md([{"file": "a.jpg", "detections": [_det("1", 0.9, [0.1, 0.1, 0.0, 0.2])]}])), "width, height > 0"),
    (json.dumps(_md([{"file": "a.jpg", "detections": [_det("1", "high", [0.1, 0.1, 0.2, 0.2])]}])),
     "detections[0]: 'conf' must be a number"),
    (json.dumps(_md([{"file": "a.jpg", "detections": [_det(1, 0.9, [0.1, 0.1, 0.2, 0.2])]}])), "'category' id"),
    (json.dumps(_md([{"file": "a.jpg", "failure": 3}])), "'failure' must be a string"),
    (json.dumps({**_md([]), "info": {"format_version": "2.0"}}), "'2.0' is not a 1.x version"),
    (json.dumps(_md([{"file": "a.jpg", "detections": []}, {"file": "a.jpg", "detections": []}])), "listed twice"),
]


@pytest.mark.parametrize("text, words", BAD_FILES, ids=[words for _, words in BAD_FILES])
def test_bad_file_is_one_line_naming_it(tmp_path, text, words):
    path = tmp_path / "season.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as err:
        read_md_json(path)
    message = str(err.value)
    assert str(path) in message and words in message and "\n" not in message, message


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="MegaDetector file not found"):
        read_md_json(tmp_path / "nope.json")


def _jpeg(path, size, orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.new("RGB", size, (90, 120, 30)).save(path, exif=exif)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for name, n in {"cats": 7, "dogs": 4, "birds": 2}.items():
        for i in range(n):
            _jpeg(root / name / f"{i}.jpg", (40, 30), orientation=6 if (name, i) == ("cats", 3) else None)
    return root


def test_imagefolder_trains_on_megadetector_boxes(folder, tmp_path, capsys):
    images = [
        {"file": "cats/0.jpg", "detections": [_det("1", 0.9, [0.1, 0.2, 0.3, 0.4]), _det("2", 0.9, [0, 0, 1, 1]),
                                              _det("1", 0.8, [0.5, 0.0, 0.5, 1.0])]},
        {"file": "cats/1.jpg", "detections": []},
        {"file": "cats/2.jpg", "failure": "Failure image access", "detections": None},
        {"file": "cats/3.jpg", "detections": [_det("1", 0.5, [0.5, 0.5, 0.5, 0.5])]},  # displayed 30x40
        {"file": "cats/4.jpg", "detections": [_det("1", 0.1, [0.5, 0.5, 0.5, 0.5])]},
        *({"file": f"dogs/{i}.jpg", "detections": [_det("1", 0.7, [0.0, 0.0, 0.5, 0.5])]} for i in range(1, 4)),
        {"file": str(folder / "dogs" / "0.jpg"), "detections": [_det("1", 0.7, [0.0, 0.0, 0.5, 0.5])]},  # absolute
        {"file": "birds/0.jpg", "detections": [_det("1", 0.3, [0.25, 0.25, 0.5, 0.5])]},
        {"file": "birds/1.jpg", "failure": "Failure image access", "detections": None},
        {"file": "fish/gone.jpg", "failure": "File not found", "detections": None},  # absent, left out: fine
    ]
    md = _write_json(tmp_path / "md.json", _md(images))
    bench = build_splits({"name": "imagefolder", "root": str(folder), "id_classes": ["cats", "dogs"],
                             "annotations": str(md), "test_fraction": 0.25, "val_fraction": 0.34})
    assert "leaves out 4 image(s) (2 MegaDetector failed on it; 2 no animal box with conf >= 0.2)" \
        in capsys.readouterr().out
    items = {s: (split, i) for split in bench.splits.values() for i, s in enumerate(split.sources)}
    expected = {"cats/0.jpg#box=4,6,16,18", "cats/0.jpg#box=20,0,40,30", "cats/3.jpg#box=15,20,30,40",
                "cats/5.jpg", "cats/6.jpg",  # not in the file: used whole
                *(f"dogs/{i}.jpg#box=0,0,20,15" for i in range(4)), "birds/0.jpg#box=10,7,30,23"}
    assert set(items) == {str(folder / s) for s in expected}
    split, i = items[str(folder / "cats/3.jpg#box=15,20,30,40")]
    assert split.load_image(i).size == (15, 20)

    images.append({"file": "dogs/ghost.jpg", "detections": [_det("1", 0.9, [0, 0, 1, 1])]})
    _write_json(md, _md(images))
    with pytest.raises(DatasetError, match="dogs/ghost.jpg"):
        build_splits({"name": "imagefolder", "root": str(folder), "id_classes": ["cats", "dogs"],
                         "annotations": str(md), "test_fraction": 0.25, "val_fraction": 0.34})
