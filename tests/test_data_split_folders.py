"""Data that comes split (`wildcapture.data.split_folders`): class folders under train/ and test/ (or val/) are used
as given; no test image is ever trained on."""
import numpy as np
import pytest
from PIL import Image

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError

TRAIN = {"cat": 8, "dog": 8}
TEST = {"cat": 3, "dog": 4, "fox": 2, "owl": 3}


def _tree(folder, counts, seed):
    """Write `counts[class]` tiny PNGs per class folder under `folder`; return the paths (sorted) per class."""
    paths = {}
    for c, (name, n) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True)
        paths[name] = []
        for i in range(n):
            path = folder / name / f"{i:02d}.png"
            Image.new("RGB", (5 + i, 6), (seed, 30 * c, 10 * i)).save(path)
            paths[name].append(str(path))
    return paths


@pytest.fixture
def split_root(tmp_path):
    root = tmp_path / "zoo"
    return root, _tree(root / "train", TRAIN, 1), _tree(root / "test", TEST, 2)


def _all(paths, classes):
    return [p for c in classes for p in paths[c]]


def test_train_and_val_come_from_train_test_is_the_test_folder(split_root):
    root, train, test = split_root
    bench = build_splits({"name": "imagefolder", "root": str(root), "val_fraction": 0.25, "test_fraction": 0.5})
    s = bench.splits
    assert bench.id_class_names == ["cat", "dog"] and bench.ood_class_names == ["fox", "owl"]
    assert bench.protocol.splits == ("train_id", "val_id", "test_id", "ood_heldout")
    # train_id + val_id: exactly the training images (test_fraction plays no part), split 3:1 per class
    assert sorted(s["train_id"].sources + s["val_id"].sources) == _all(train, ["cat", "dog"])
    assert not set(s["train_id"].sources) & set(s["val_id"].sources)
    assert (len(s["train_id"]), len(s["val_id"])) == (12, 4)
    for split in ("train_id", "val_id"):
        assert sorted(s[split].labels.tolist()) == sorted([0] * (len(s[split]) // 2) + [1] * (len(s[split]) // 2))
    # test_id: exactly the test folder's ID images, untouched and in order; the held-out set: its other classes
    assert s["test_id"].sources == _all(test, ["cat", "dog"])
    assert s["test_id"].labels.tolist() == [0] * 3 + [1] * 4 and s["test_id"].class_names == ["cat"] * 3 + ["dog"] * 4
    assert s["ood_heldout"].sources == _all(test, ["fox", "owl"]) and (s["ood_heldout"].labels == -1).all()
    assert s["ood_heldout"].class_names == ["fox"] * 2 + ["owl"] * 3
    trained = set(s["train_id"].sources + s["val_id"].sources)
    assert all("/train/" in p for p in trained)
    assert not trained & set(s["test_id"].sources + s["ood_heldout"].sources)
    # seeded: the same config gives the same splits
    again = build_splits({"name": "imagefolder", "root": str(root), "val_fraction": 0.25})
    assert all(again.splits[k].sources == s[k].sources for k in bench.protocol.splits)


def test_id_and_ood_classes_pick_from_the_folders(split_root):
    root, train, test = split_root
    bench = build_splits({"name": "imagefolder", "root": str(root), "id_classes": ["Dog"],
                             "ood_classes": ["owl"], "val_fraction": 0.25})
    s = bench.splits
    assert bench.id_class_names == ["Dog"] and bench.ood_class_names == ["owl"]
    assert sorted(s["train_id"].sources + s["val_id"].sources) == train["dog"]  # no cat is trained on
    assert s["test_id"].sources == test["dog"] and set(s["test_id"].labels.tolist()) == {0}
    assert s["ood_heldout"].sources == test["owl"] and s["ood_heldout"].class_names == ["owl"] * 3
    # id_classes missing from the test folder, or annotations: one clear error each
    (root / "train" / "bee").mkdir()
    Image.new("RGB", (4, 4)).save(root / "train" / "bee" / "0.png")
    with pytest.raises(DatasetError, match=r"class 'bee' from data.id_classes not found among the class folders in "
                                           rf"{root / 'test'}"):
        build_splits({"name": "imagefolder", "root": str(root), "id_classes": ["bee", "cat"]})
    with pytest.raises(DatasetError, match="data.annotations is not supported for data that comes split"):
        build_splits({"name": "imagefolder", "root": str(root), "annotations": str(root / "boxes.csv")})


def test_a_val_folder_is_the_test_folder(tmp_path):
    root = tmp_path / "nette"
    train, val = _tree(root / "train", {"a": 4, "b": 4}, 1), _tree(root / "val", {"a": 2, "b": 2, "c": 2}, 2)
    bench = build_splits({"name": "imagefolder", "root": str(root), "val_fraction": 0.25})
    assert bench.splits["test_id"].sources == _all(val, ["a", "b"])
    assert bench.splits["ood_heldout"].sources == val["c"]
    assert sorted(bench.splits["train_id"].sources + bench.splits["val_id"].sources) == _all(train, ["a", "b"])


def test_cifar10_reads_class_folders_when_no_pickles_are_there(tmp_path):
    names = ["airplane", "automobile", "bird", "cat"]
    train = _tree(tmp_path / "cifar10" / "train", dict.fromkeys(names, 4), 1)
    test = _tree(tmp_path / "cifar10" / "test", dict.fromkeys(names, 2), 2)
    _tree(tmp_path / "far", {"noise": 3}, 3)
    far = {"name": "noise", "group": "far", "source": "imagefolder", "root": "far"}
    bench = build_splits({"name": "cifar10", "root": str(tmp_path), "id_classes": ["cat", "bird"],
                             "val_fraction": 0.25, "ood_sets": [far]})
    s = bench.splits
    assert bench.id_class_names == ["cat", "bird"]
    # the declared set, then the classes left out of id_classes as the held-out near set
    assert [(o.name, o.group) for o in bench.protocol.ood_sets] == [("noise", "far"), ("heldout", "near")]
    assert sorted(s["train_id"].sources + s["val_id"].sources) == sorted(_all(train, ["bird", "cat"]))
    assert s["test_id"].sources == _all(test, ["cat", "bird"]) and s["test_id"].labels.tolist() == [0, 0, 1, 1]
    assert s["ood_heldout"].sources == _all(test, ["airplane", "automobile"])
    assert s["ood_noise"].sources == [str(tmp_path / "far" / "noise" / f"{i:02d}.png") for i in range(3)]
    image = s["test_id"].load_image(0)
    assert image.mode == "RGB" and (np.asarray(image) == np.asarray(Image.open(test["cat"][0]))).all()
    # every class ID: no held-out set, the declared list alone
    whole = build_splits({"name": "cifar10", "root": str(tmp_path), "val_fraction": 0.25, "ood_sets": [far]})
    assert whole.protocol.ood_splits == ("ood_noise",) and whole.id_class_names == names
    assert whole.splits["test_id"].sources == _all(test, names)
