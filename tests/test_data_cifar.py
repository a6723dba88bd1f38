"""CIFAR benchmarks on tiny data written in torchvision's real on-disk pickle format.

torchvision checks the md5 of the official files, which tiny fake files cannot match, so the tests
(only) replace `torchvision.datasets.cifar.check_integrity` by a file-exists check; the loading
code itself is torchvision's own.
"""
import os
import pickle

import numpy as np
import pytest
import torchvision.datasets.cifar

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
C100_NAMES = [f"class_{i:02d}" for i in range(100)]


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _batch(rng, n, n_classes, label_key):
    """One batch dict as CIFAR stores it: data N x 3072 uint8 (CHW rows), labels list; also the HWC images."""
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    data = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)
    return {"data": data, label_key: labels.tolist(), "filenames": [f"{i}.png" for i in range(n)]}, hwc


def _write_cifar(root):
    """Write tiny CIFAR-10 (5 x 20 train, 30 test) and CIFAR-100 (500 train, 100 test); return HWC test images."""
    rng = np.random.default_rng(0)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for b in range(1, 6):
        _dump(c10 / f"data_batch_{b}", _batch(rng, 20, 10, "labels")[0])
    test10, hwc10 = _batch(rng, 30, 10, "labels")
    _dump(c10 / "test_batch", test10)
    _dump(c10 / "batches.meta", {"label_names": C10_NAMES})
    c100 = root / "cifar-100-python"
    c100.mkdir()
    _dump(c100 / "train", _batch(rng, 500, 100, "fine_labels")[0])
    test100, hwc100 = _batch(rng, 100, 100, "fine_labels")
    _dump(c100 / "test", test100)
    _dump(c100 / "meta", {"fine_label_names": C100_NAMES, "coarse_label_names": []})
    return {"cifar10": (test10, hwc10), "cifar100": (test100, hwc100)}


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))
    return tmp_path, _write_cifar(tmp_path)


def test_cifar10_vs_cifar100(cifar_root):
    root, tests = cifar_root
    bench = build_splits({"name": "cifar10", "root": str(root), "val_fraction": 0.1})
    s = bench.splits
    assert bench.id_class_names == C10_NAMES and bench.ood_class_names == []  # no CIFAR-10 class held out
    assert [(o.name, o.group, o.source) for o in bench.protocol.ood_sets] == [("cifar100", "near", "cifar100")]
    assert (len(s["train_id"]), len(s["val_id"]), len(s["test_id"]), len(s["ood_cifar100"])) == (90, 10, 30, 100)
    assert not set(s["train_id"].sources) & set(s["val_id"].sources)
    assert s["ood_cifar100"].sources == [f"cifar100/{i}" for i in range(100)]
    assert s["ood_cifar100"].class_names == [C100_NAMES[t] for t in tests["cifar100"][0]["fine_labels"]]
    assert (s["ood_cifar100"].labels == -1).all()
    batch, hwc = tests["cifar10"]
    for i in (0, 7, 29):  # right pixels, labels and names, channels not scrambled
        assert s["test_id"].sources[i] == f"cifar10/test/{i}"
        image = s["test_id"].load_image(i)
        assert image.mode == "RGB" and (np.asarray(image) == hwc[i]).all()
        assert s["test_id"].labels[i] == batch["labels"][i]
        assert s["test_id"].class_names[i] == C10_NAMES[batch["labels"][i]]
    ood_image = s["ood_cifar100"].load_image(5)
    assert (np.asarray(ood_image) == tests["cifar100"][1][5]).all()


def test_cifar100_vs_cifar10_and_class_subset(cifar_root):
    root, tests = cifar_root
    bench = build_splits({"name": "cifar100", "root": str(root), "val_fraction": 0.2})
    s = bench.splits
    assert (len(s["train_id"]), len(s["val_id"]), len(s["test_id"]), len(s["ood_cifar10"])) == (400, 100, 100, 30)
    assert set(s["ood_cifar10"].class_names) == set(C10_NAMES)

    # open-set recognition: the classes left out of id_classes (or ood_classes of them) are one more near set
    sub = build_splits({"name": "cifar10", "root": str(root), "val_fraction": 0.25,
                           "id_classes": ["truck", "Cat"], "ood_classes": ["bird", "deer"]})
    assert sub.id_class_names == ["truck", "cat"]
    assert sub.protocol.splits == ("train_id", "val_id", "test_id", "ood_cifar100", "ood_heldout")
    assert set(sub.splits["test_id"].class_names) == {"truck", "cat"}
    for name, label in zip(sub.splits["test_id"].class_names, sub.splits["test_id"].labels):
        assert label == ["truck", "cat"].index(name)
    test_labels = np.array(tests["cifar10"][0]["labels"])
    held = np.flatnonzero(np.isin(test_labels, [C10_NAMES.index("bird"), C10_NAMES.index("deer")]))
    assert sub.splits["ood_heldout"].sources == [f"cifar10/test/{i}" for i in held]
    assert set(sub.splits["ood_heldout"].class_names) == {"bird", "deer"}
    with pytest.raises(DatasetError, match="class 'truck' from data.ood_classes not found"):
        build_splits({"name": "cifar10", "root": str(root), "id_classes": ["truck"], "ood_classes": ["truck"]})


def test_missing_cifar_names_folder_and_fix(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_splits({"name": "cifar10", "root": str(tmp_path / "nowhere")})
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data.download=true" in msg and "python-version batches" in msg
