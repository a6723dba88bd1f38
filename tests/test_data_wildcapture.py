"""WildCapture class folders: mixed image modes, EXIF, crops from an annotation CSV, manifest, errors."""
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wildcapture.data.build import build_splits
from wildcapture.data.images import load_rgb
from wildcapture.errors import DatasetError
from wildcapture.data.wildcapture_folders import PAPER_ID_SPECIES, PAPER_OOD_SPECIES

# (subpath, mode, extension, PIL format): night IR is mode "L"; folders recurse; extensions any case
VARIANTS = [("", "RGB", ".jpg", "JPEG"), ("night/", "L", ".JPG", "JPEG"), ("", "CMYK", ".jpeg", "JPEG"),
            ("", "P", ".png", "PNG"), ("day/x/", "RGBA", ".PNG", "PNG"), ("", "RGB", ".png", "PNG")]

SPLITS = ("train_id", "val_id", "test_id", "ood_heldout")  # the default protocol's splits


def _write_image(path, mode, fmt, size, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if mode == "P":
        image = image.quantize(16)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return size


def _make_tree(folder, classes):
    """Write classes {folder name: n images}; return {path: (width, height)}."""
    sizes = {}
    for c, (name, n) in enumerate(classes.items()):
        for i in range(n):
            sub, mode, ext, fmt = VARIANTS[i % len(VARIANTS)]
            path = folder / name / f"{sub}img_{i:02d}{ext}"
            sizes[path] = _write_image(path, mode, fmt, (24 + 3 * i, 16 + 2 * c), seed=100 * c + i)
    return sizes


@pytest.fixture
def tree(tmp_path):
    folder = tmp_path / "data" / "WildCapture"
    sizes = _make_tree(folder, {"Red_Deer": 10, "grey-wolf": 10, "Wild Cat": 4, "Other": 2})
    (folder / "Red_Deer" / ".DS_Store").write_bytes(b"junk")  # hidden and not an image: ignored
    (folder / "Red_Deer" / "notes.txt").write_text("ignored")
    return tmp_path, folder, sizes


CFG = {"name": "wildcapture", "id_classes": ["Red Deer", "Grey Wolf"], "ood_classes": ["wild_cat"]}


def test_whole_images_load_rgb_with_right_size(tree):
    root, folder, sizes = tree
    bench = build_splits({**CFG, "root": str(root / "data")})
    counts = {k: len(v) for k, v in bench.splits.items()}
    assert counts == {"train_id": 14, "val_id": 2, "test_id": 4, "ood_heldout": 4}
    assert bench.id_class_names == ["Red Deer", "Grey Wolf"] and bench.ood_class_names == ["wild_cat"]
    seen, raw_modes = set(), set()
    for k in SPLITS:
        split = bench.splits[k]
        for i, source in enumerate(split.sources):
            image = split.load_image(i)
            assert image.mode == "RGB" and image.size == sizes[Path(source)]
            raw_modes.add(Image.open(source).mode)
            seen.add(source)
        assert (split.labels == -1).all() == (k == "ood_heldout")
    assert len(seen) == 24 and not any("Other" in s for s in seen)
    assert raw_modes == {"RGB", "L", "CMYK", "P", "RGBA"}
    train = bench.splits["train_id"]
    for name, label in zip(train.class_names, train.labels):
        assert label == ["Red Deer", "Grey Wolf"].index(name)
    x, y = bench.splits["ood_heldout"][0]
    assert x.shape[0] == 3 and y == -1


def test_crops_from_annotations_and_manifest(tree):
    root, folder, _ = tree
    ann = root / "boxes.csv"
    rows = [("Red_Deer/img_05.png", 2, 3, 12, 9), ("Red_Deer/img_05.png", 10, 0, 20, 15),
            ("Wild Cat\\img_03.png", 0, 0, 8.4, 6), ("Red_Deer/night/img_01.JPG", 5, 5, 15, 12),
            ("Other/img_00.jpg", 0, 0, 4, 4)]  # a class not in use: ignored
    with open(ann, "w", newline="") as f:
        csv.writer(f).writerows([("path", "x_min", "y_min", "x_max", "y_max"), *rows])
    whole = build_splits({**CFG, "root": str(root / "data")})
    bench = build_splits({**CFG, "root": str(root / "data"), "annotations": str(ann)})
    n_whole = sum(len(v) for v in whole.splits.values())
    assert sum(len(v) for v in bench.splits.values()) == n_whole + 1  # img_05: 2 boxes = 2 items

    items = {s: (k, split, i) for k, split in bench.splits.items() for i, s in enumerate(split.sources)}
    crop_a = str(folder / "Red_Deer/img_05.png") + "#box=2,3,12,9"
    crop_b = str(folder / "Red_Deer/img_05.png") + "#box=10,0,20,15"
    assert items[crop_a][0] == items[crop_b][0]  # crops of one image share a split
    assert str(folder / "Red_Deer/img_05.png") not in items
    full = np.asarray(Image.open(folder / "Red_Deer/img_05.png").convert("RGB"))
    for source, (x0, y0, x1, y1) in ((crop_a, (2, 3, 12, 9)), (crop_b, (10, 0, 20, 15))):
        _, split, i = items[source]
        crop = split.load_image(i)
        assert crop.mode == "RGB" and crop.size == (x1 - x0, y1 - y0)
        assert (np.asarray(crop) == full[y0:y1, x0:x1]).all()
    _, split, i = items[str(folder / "Wild Cat/img_03.png") + "#box=0,0,8,6"]  # backslash path, 8.4 rounded
    assert split.load_image(i).size == (8, 6)
    _, split, i = items[str(folder / "Red_Deer/night/img_01.JPG") + "#box=5,5,15,12"]
    assert split.load_image(i).mode == "RGB"

    bench.write_manifest(root / "out" / "manifest.csv")
    with open(root / "out" / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == len(items)
    assert {(r["split"], r["source"]) for r in manifest} == {(k, s) for s, (k, _, _) in items.items()}
    assert {r["class_name"] for r in manifest if r["split"] == "ood_heldout"} == {"wild_cat"}


def test_paper_default_species_with_folder_name_variants(tmp_path):
    folders = {n.replace(" ", "_"): 4 for n in PAPER_ID_SPECIES} | {n.upper(): 1 for n in PAPER_OOD_SPECIES}
    _make_tree(tmp_path / "WildCapture", folders)
    bench = build_splits({"name": "wildcapture", "root": str(tmp_path), "test_fraction": 0.25,
                             "val_fraction": 0.34, "seed": 1})
    assert bench.id_class_names == PAPER_ID_SPECIES and bench.ood_class_names == PAPER_OOD_SPECIES
    assert [len(bench.splits[k]) for k in SPLITS] == [13, 8, 7, 8]
    again = build_splits({"name": "wildcapture", "root": str(tmp_path), "test_fraction": 0.25,
                             "val_fraction": 0.34, "seed": 1})
    assert all(bench.splits[k].sources == again.splits[k].sources for k in SPLITS)


def test_exif_orientation_and_16bit_grayscale(tmp_path):
    rotated = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)
    Image.fromarray(np.full((5, 6), 65535, dtype=np.uint16)).save(tmp_path / "ir16.png")
    image = load_rgb(tmp_path / "ir16.png")
    assert image.mode == "RGB" and (np.asarray(image) == 255).all()


def test_missing_wildcapture_folder(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_splits({"name": "wildcapture", "root": str(tmp_path)})
    assert str(tmp_path / "WildCapture") in str(err.value) and "one folder per species" in str(err.value)


def test_missing_species_lists_folders(tree):
    root, _, _ = tree
    with pytest.raises(DatasetError) as err:
        build_splits({**CFG, "root": str(root / "data"), "ood_classes": ["Crested Porcupine"]})
    msg = str(err.value)
    assert "Crested Porcupine" in msg and "Red_Deer" in msg and "grey-wolf" in msg


def test_corrupt_image_names_its_path(tree):
    root, folder, _ = tree
    bad = folder / "Wild Cat" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    bench = build_splits({**CFG, "root": str(root / "data")})
    ood = bench.splits["ood_heldout"]
    i = ood.sources.index(str(bad))
    with pytest.raises(DatasetError, match="broken.jpg"):
        ood.load_image(i)


def test_annotation_errors(tree):
    root, _, _ = tree
    for text, words in [("file,x,y\n", ["x_min", "boxes.csv"]),
                        ("path,x_min,y_min,x_max,y_max\nRed_Deer/img_00.jpg,5,5,2,9\n", ["line 2"]),
                        ("path,x_min,y_min,x_max,y_max\nRed_Deer/nope.jpg,0,0,2,2\n", ["Red_Deer/nope.jpg"])]:
        (root / "boxes.csv").write_text(text)
        with pytest.raises(DatasetError) as err:
            build_splits({**CFG, "root": str(root / "data"), "annotations": str(root / "boxes.csv")})
        assert all(w in str(err.value) for w in words), str(err.value)
