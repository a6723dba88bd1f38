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

from wildcapture.data.benchmarks import build_benchmark
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
    bench = build_benchmark({"name": "cifar10", "root": str(root), "val_fraction": 0.1})
    s = bench.splits
    assert bench.id_class_names == C10_NAMES and bench.ood_class_names == C100_NAMES
    assert (len(s["train_id"]), len(s["val_id"]), len(s["test_id"]), len(s["test_ood"])) == (90, 10, 30, 100)
    assert not set(s["train_id"].sources) & set(s["val_id"].sources)
    assert all(src.startswith("cifar100/test/") for src in s["test_ood"].sources)
    assert set(s["test_ood"].class_names) == set(C100_NAMES) and (s["test_ood"].labels == -1).all()
    batch, hwc = tests["cifar10"]
    for i in (0, 7, 29):  # right pixels, labels and names, channels not scrambled
        assert s["test_id"].sources[i] == f"cifar10/test/{i}"
        image = s["test_id"].load_image(i)
        assert image.mode == "RGB" and (np.asarray(image) == hwc[i]).all()
        assert s["test_id"].labels[i] == batch["labels"][i]
        assert s["test_id"].class_names[i] == C10_NAMES[batch["labels"][i]]
    ood_image = s["test_ood"].load_image(5)
    assert (np.asarray(ood_image) == tests["cifar100"][1][5]).all()


def test_cifar100_vs_cifar10_and_class_subset(cifar_root):
    root, tests = cifar_root
    bench = build_benchmark({"name": "cifar100", "root": str(root), "val_fraction": 0.2})
    s = bench.splits
    assert (len(s["train_id"]), len(s["val_id"]), len(s["test_id"]), len(s["test_ood"])) == (400, 100, 100, 30)
    assert all(src.startswith("cifar10/test/") for src in s["test_ood"].sources)
    assert set(s["test_ood"].class_names) == set(C10_NAMES)

    sub = build_benchmark({"name": "cifar10", "root": str(root), "val_fraction": 0.25,
                           "id_classes": ["truck", "Cat"], "ood_classes": ["class_03"]})
    assert sub.id_class_names == ["truck", "cat"]
    assert set(sub.splits["test_id"].class_names) == {"truck", "cat"}
    for name, label in zip(sub.splits["test_id"].class_names, sub.splits["test_id"].labels):
        assert label == ["truck", "cat"].index(name)
    assert len(sub.splits["test_ood"]) == 1


def test_missing_cifar_names_folder_and_fix(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_benchmark({"name": "cifar10", "root": str(tmp_path / "nowhere")})
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data.download=true" in msg and "python-version batches" in msg
