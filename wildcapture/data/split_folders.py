"""Data that comes split: class folders under `train/` and `test/` (or `val/`), used as given.

The layout of ImageNet, Imagenette and the CIFAR-10 folders (`<root>/train/<class>/*.jpg`,
`<root>/test/<class>/*.jpg`). `train_id` and `val_id` are a seeded stratified split of the ID classes' training
images (`data.val_fraction`); `test_id` is the test folder's ID classes, untouched; the test folder's other
classes (or `data.ood_classes`) are held out (the `classes` OOD set). No test image is ever trained on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from .classes import check_disjoint, match_classes
from .images import FileImages, list_class_folders, list_images
from .splits import DataSplits, ImageSplit, stratified_split
from wildcapture.data.protocol import TEST_ID, TRAIN_ID, VAL_ID

TEST_FOLDERS = ("test", "val")


def split_layout(folder: Path) -> tuple[Path, Path] | None:
    """(train folder, test folder) when `folder` holds `train/` and `test/` (or `val/`), else None."""
    train = folder / "train"
    tests = [folder / name for name in TEST_FOLDERS if (folder / name).is_dir()]
    return (train, tests[0]) if train.is_dir() and tests else None


def _images_of(folder: Path, class_folders: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
    """Every image of each class folder, with its class's label (DatasetError for a folder without images)."""
    sources, out = [], []
    for class_folder, label in zip(class_folders, labels):
        paths = list_images(folder / class_folder)
        if not paths:
            raise DatasetError(f"class folder {folder / class_folder} holds no .jpg/.jpeg/.png images")
        sources += [str(p) for p in paths]
        out += [label] * len(paths)
    return sources, out


def build_split_folders(name: str, train_dir: Path, test_dir: Path, id_classes: Sequence[str] | None,
                        ood_classes: Sequence[str] | None, cfg: dict) -> DataSplits:
    """The data set of a train/test folder pair. `id_classes` None: every training class; `ood_classes`
    None: every test class that is not ID. Class labels follow the order of `id_classes` (folder order when None)."""
    if cfg["annotations"]:
        raise DatasetError(f"data.annotations is not supported for data that comes split ({train_dir}, {test_dir}); "
                           "crop the images beforehand or use one folder per class")
    train_classes, test_classes = list_class_folders(train_dir), list_class_folders(test_dir)
    if not train_classes:
        raise DatasetError(f"{train_dir} holds no class folders")
    id_names = list(train_classes) if id_classes is None else [str(c) for c in id_classes]
    id_train = match_classes(id_names, train_classes, f"class folders in {train_dir}", "id_classes")
    id_test = match_classes(id_names, test_classes, f"class folders in {test_dir}", "id_classes")
    if ood_classes is None:
        ood_test = [c for c in test_classes if c not in id_test]
        ood_names = list(ood_test)
    else:
        ood_names = [str(c) for c in ood_classes]
        ood_test = match_classes(ood_names, test_classes, f"class folders in {test_dir}", "ood_classes")
    check_disjoint(id_names, ood_names)

    loader = FileImages()
    labels = list(range(len(id_names)))
    train_sources, train_labels = _images_of(train_dir, id_train, labels)
    keep, held = stratified_split(train_labels, cfg["val_fraction"], cfg["seed"], id_names,
                                  f"training images in {train_dir}", "val_fraction")

    def make(sources: list[str], split_labels: list[int], rows: np.ndarray) -> ImageSplit:
        return ImageSplit([sources[r] for r in rows], [split_labels[r] for r in rows],
                          [id_names[split_labels[r]] for r in rows], loader)

    test_sources, test_labels = _images_of(test_dir, id_test, labels)
    splits = {TRAIN_ID: make(train_sources, train_labels, keep), VAL_ID: make(train_sources, train_labels, held),
              TEST_ID: make(test_sources, test_labels, np.arange(len(test_sources)))}
    held_out = None
    if ood_test:
        ood_sources, ood_labels = _images_of(test_dir, ood_test, list(range(len(ood_test))))
        held_out = ImageSplit(ood_sources, np.full(len(ood_sources), -1, dtype=np.int64),
                              [ood_names[c] for c in ood_labels], loader)
    return DataSplits(name, id_names, ood_names, splits, held_out)
