"""The CIFAR-10 and CIFAR-100 data sets (ID: the data set's classes, or `data.id_classes` of them).

Data comes from torchvision's loaders in their python-pickle format under ``<root>/cifar-10-batches-py``
and ``<root>/cifar-100-python``, or from class folders ``<root>/cifar10/{train,test}/<class>/``. Pickled images
stay in the datasets' uint8 N x 32 x 32 x 3 arrays; their sources are ``"cifar10/train/<i>"`` etc. (``i`` = row
in that array); folder images are file sources.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from ..errors import DatasetError
from ..paths import resolve_path
from .classes import match_classes
from .images import ArrayImages
from .split_folders import build_split_folders, split_layout
from .splits import DataSplits, ImageSplit, stratified_split
from wildcapture.data.protocol import TEST_ID, TRAIN_ID, VAL_ID

_DATASETS = {"cifar10": (CIFAR10, "CIFAR-10", "cifar-10-python.tar.gz"),
             "cifar100": (CIFAR100, "CIFAR-100", "cifar-100-python.tar.gz")}


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
            f"https://www.cs.toronto.edu/~kriz/cifar.html into {root}), or class folders in {root / name}/train/ and "
            f"{root / name}/test/; data.root sets the folder") from exc
    return np.asarray(dataset.data, dtype=np.uint8), np.asarray(dataset.targets, dtype=np.int64), list(dataset.classes)


def _select(labels: np.ndarray, all_names: list[str], chosen: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Keep rows whose class is in ``chosen``; return (row indices, labels re-indexed to ``chosen``)."""
    remap = np.full(len(all_names), -1, dtype=np.int64)
    for new, name in enumerate(chosen):
        remap[all_names.index(name)] = new
    rows = np.flatnonzero(remap[labels] >= 0)
    return rows, remap[labels[rows]]


def build_cifar(cfg: dict) -> DataSplits:
    """Build cifar10 or cifar100 from a resolved config: torchvision's pickles under ``data.root`` when they are
    there, else the class-folder layout ``<root>/<name>/{train,test}/<class>/`` (`split_folders`).

    train_id/val_id: seeded stratified split of the ID classes' training images by ``val_fraction``; test_id: the
    ID classes' test images. ``id_classes`` picks a subset (by name; null keeps every class); the other classes'
    test images (or ``ood_classes`` of them) are held out: the `classes` OOD set (open-set recognition). The
    other CIFAR's test set is an OOD set of its own (`ood_sources`), the data set's default.
    """
    name = cfg["name"]
    root = resolve_path(cfg["root"])
    cls, title, _ = _DATASETS[name]
    if not (root / cls.base_folder).exists() and split_layout(root / name) is not None:
        return build_split_folders(name, *split_layout(root / name), cfg["id_classes"], cfg["ood_classes"], cfg)
    train = load_cifar(name, root, True, cfg["download"])
    test = load_cifar(name, root, False, cfg["download"])
    all_names = train[2]
    id_names = all_names if cfg["id_classes"] is None else match_classes(
        cfg["id_classes"], all_names, f"{title} classes", "id_classes")
    rest = [c for c in all_names if c not in id_names]
    ood_names = rest if cfg["ood_classes"] is None else match_classes(
        cfg["ood_classes"], rest, f"{title} classes that are not ID", "ood_classes")
    if not id_names:
        raise DatasetError("data.id_classes must name at least one class (or be null)")

    loader = ArrayImages({f"{name}/train": train[0], f"{name}/test": test[0]})

    def make(key: str, rows: np.ndarray, labels: np.ndarray, true: np.ndarray) -> ImageSplit:
        return ImageSplit([f"{key}/{r}" for r in rows], labels, [all_names[t] for t in true[rows]], loader)

    train_rows, train_labels = _select(train[1], all_names, id_names)
    keep, held = stratified_split(train_labels, cfg["val_fraction"], cfg["seed"], id_names,
                                  f"{title} training images", "val_fraction")
    test_rows, test_labels = _select(test[1], all_names, id_names)
    ood_rows, _ = _select(test[1], all_names, ood_names)
    splits = {
        TRAIN_ID: make(f"{name}/train", train_rows[keep], train_labels[keep], train[1]),
        VAL_ID: make(f"{name}/train", train_rows[held], train_labels[held], train[1]),
        TEST_ID: make(f"{name}/test", test_rows, test_labels, test[1]),
    }
    held_out = (make(f"{name}/test", ood_rows, np.full(len(ood_rows), -1, dtype=np.int64), test[1])
                if len(ood_rows) else None)
    return DataSplits(name, list(id_names), list(ood_names), splits, held_out)
