"""CIFAR-10 vs CIFAR-100 benchmarks: one dataset is ID, the other's test set is OOD.

Data comes from torchvision's loaders in their python-pickle format under ``<root>/cifar-10-batches-py``
and ``<root>/cifar-100-python``. Images stay in the datasets' uint8 N x 32 x 32 x 3 arrays; sources
are ``"cifar10/train/<i>"``, ``"cifar100/test/<i>"`` etc. (``i`` = row in that array).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from ..errors import DatasetError
from ..paths import resolve_path
from .classes import match_classes
from .images import ArrayImages
from .splits import Benchmark, ImageSplit, stratified_split

_DATASETS = {"cifar10": (CIFAR10, "CIFAR-10", "cifar-10-python.tar.gz"),
             "cifar100": (CIFAR100, "CIFAR-100", "cifar-100-python.tar.gz")}
_OTHER = {"cifar10": "cifar100", "cifar100": "cifar10"}


def load_cifar(name: str, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (images N x 32 x 32 x 3 uint8, int64 labels N, class names) of one CIFAR part.

    Raises DatasetError naming the folder looked in when the data is missing or corrupt.
    """
    cls, title, archive = _DATASETS[name]
    folder = root / cls.base_folder
    try:
        dataset = cls(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as exc:
        problem = (f"could not be downloaded into {folder} ({exc}): check the network, or" if download
                   else f"not found or corrupted in {folder}: set data.download=true to download it, or")
        raise DatasetError(
            f"{title} {problem} put the python-version batches there by hand (extract {archive} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html into {root}); data.root sets the folder") from exc
    return np.asarray(dataset.data, dtype=np.uint8), np.asarray(dataset.targets, dtype=np.int64), list(dataset.classes)


def _select(labels: np.ndarray, all_names: list[str], chosen: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Keep rows whose class is in ``chosen``; return (row indices, labels re-indexed to ``chosen``)."""
    remap = np.full(len(all_names), -1, dtype=np.int64)
    for new, name in enumerate(chosen):
        remap[all_names.index(name)] = new
    rows = np.flatnonzero(remap[labels] >= 0)
    return rows, remap[labels[rows]]


def build_cifar(cfg: dict) -> Benchmark:
    """Build cifar10 (ID) vs CIFAR-100 test (OOD), or cifar100 vs CIFAR-10 test, from a resolved config.

    train_id/val_id: seeded stratified split of the ID training set by ``val_fraction``; test_id: the ID
    test set; test_ood: the other dataset's test set. ``id_classes``/``ood_classes`` may pick subsets
    (by name); null keeps every class.
    """
    name, other = cfg["name"], _OTHER[cfg["name"]]
    root = resolve_path(cfg["root"])
    train = load_cifar(name, root, True, cfg["download"])
    test = load_cifar(name, root, False, cfg["download"])
    ood = load_cifar(other, root, False, cfg["download"])
    all_id, all_ood = train[2], ood[2]
    id_names = all_id if cfg["id_classes"] is None else match_classes(
        cfg["id_classes"], all_id, f"{_DATASETS[name][1]} classes", "id_classes")
    ood_names = all_ood if cfg["ood_classes"] is None else match_classes(
        cfg["ood_classes"], all_ood, f"{_DATASETS[other][1]} classes", "ood_classes")
    if not id_names or not ood_names:
        raise DatasetError("data.id_classes and data.ood_classes must each name at least one class (or be null)")

    loader = ArrayImages({f"{name}/train": train[0], f"{name}/test": test[0], f"{other}/test": ood[0]})

    def make(key: str, rows: np.ndarray, labels: np.ndarray, names: list[str], true: np.ndarray) -> ImageSplit:
        return ImageSplit([f"{key}/{r}" for r in rows], labels, [names[t] for t in true[rows]], loader)

    train_rows, train_labels = _select(train[1], all_id, id_names)
    keep, held = stratified_split(train_labels, cfg["val_fraction"], cfg["seed"], id_names,
                                  f"{_DATASETS[name][1]} training images", "val_fraction")
    test_rows, test_labels = _select(test[1], all_id, id_names)
    ood_rows, _ = _select(ood[1], all_ood, ood_names)
    splits = {
        "train_id": make(f"{name}/train", train_rows[keep], train_labels[keep], all_id, train[1]),
        "val_id": make(f"{name}/train", train_rows[held], train_labels[held], all_id, train[1]),
        "test_id": make(f"{name}/test", test_rows, test_labels, all_id, test[1]),
        "test_ood": make(f"{other}/test", ood_rows, np.full(len(ood_rows), -1, dtype=np.int64), all_ood, ood[1]),
    }
    return Benchmark(name, list(id_names), list(ood_names), splits)
