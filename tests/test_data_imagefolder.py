"""The generic imagefolder benchmark: OOD defaults to every other class folder; id_classes required."""
import numpy as np
import pytest
from PIL import Image

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError

SPLITS = ("train_id", "val_id", "test_id", "ood_heldout")  # the default protocol's splits


@pytest.fixture
def root(tmp_path):
    for c, (name, n) in enumerate({"cats": 6, "dogs": 6, "birds": 3, "fish": 2}.items()):
        for i in range(n):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.new("RGB", (10 + i, 12), (40 * c, 10 * i, 0)).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_ood_defaults_to_other_folders(root):
    cfg = {"name": "imagefolder", "root": str(root), "id_classes": ["dogs", "Cats"],
           "test_fraction": 0.3, "val_fraction": 0.25}
    bench = build_splits(cfg)
    assert bench.id_class_names == ["dogs", "Cats"] and bench.ood_class_names == ["birds", "fish"]
    assert [len(bench.splits[k]) for k in SPLITS] == [6, 2, 4, 5]
    ood = bench.splits["ood_heldout"]
    assert sorted(ood.class_names) == ["birds"] * 3 + ["fish"] * 2 and (ood.labels == -1).all()
    for k in ("train_id", "val_id", "test_id"):
        split = bench.splits[k]
        assert sorted(set(split.labels.tolist())) == [0, 1]
        for source, name, label in zip(split.sources, split.class_names, split.labels):
            assert f"/{name.lower()}/" in source and label == ["dogs", "cats"].index(name.lower())
    image = ood.load_image(0)
    assert image.mode == "RGB" and np.asarray(image).shape[:2] == (12, 10)
    other = build_splits({**cfg, "seed": 5})
    assert other.splits["train_id"].sources != bench.splits["train_id"].sources


def test_explicit_ood_and_errors(root):
    bench = build_splits({"name": "imagefolder", "root": str(root), "id_classes": ["cats", "dogs"],
                             "ood_classes": ["fish"], "test_fraction": 0.3, "val_fraction": 0.25})
    assert set(bench.splits["ood_heldout"].class_names) == {"fish"}
    with pytest.raises(DatasetError, match="id_classes is required"):
        build_splits({"name": "imagefolder", "root": str(root)})
    with pytest.raises(DatasetError, match="imagefolder root not found"):
        build_splits({"name": "imagefolder", "root": str(root / "x"), "id_classes": ["a"]})
    with pytest.raises(DatasetError, match="stratified"):  # too few images for the requested fractions
        build_splits({"name": "imagefolder", "root": str(root), "id_classes": ["cats", "dogs"]})
