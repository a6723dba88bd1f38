"""The offline `digits` data set: sklearn's 8x8 handwritten digits, some digits ID, the others OOD."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from wildcapture.errors import DatasetError

from .classes import check_disjoint, match_classes
from .images import ArrayImages
from .splits import DataSplits, ImageSplit, split_id_pool
from wildcapture.data.protocol import TEST_ID, TRAIN_ID, VAL_ID

DIGIT_NAMES = [str(d) for d in range(10)]
DEFAULT_ID = [0, 1, 2, 3, 4]
DEFAULT_OOD = [5, 6, 7, 8, 9]


def _digit_names(requested: list, key: str) -> list[str]:
    for value in requested:
        if not str(value).strip().isdigit() or not 0 <= int(value) <= 9:
            raise DatasetError(f"data.{key} holds {value!r}; digits classes are the integers 0..9")
    return match_classes([str(int(v)) for v in requested], DIGIT_NAMES, "digit classes 0..9", key)


def build_digits(cfg: dict) -> DataSplits:
    """Build the digits data set from a resolved data config (``root`` and ``download`` are ignored).

    Images are 8x8 uint8 grayscale (value * 255 / 16) returned as RGB; sources are ``"digits/<i>"``
    with ``i`` the row of `sklearn.datasets.load_digits`. ID items are split stratified into
    train/val/test; every OOD-digit item is held out (the `classes` OOD set).
    """
    id_names = _digit_names(cfg["id_classes"] if cfg["id_classes"] is not None else DEFAULT_ID, "id_classes")
    ood_names = _digit_names(cfg["ood_classes"] if cfg["ood_classes"] is not None else DEFAULT_OOD,
                             "ood_classes")
    check_disjoint(id_names, ood_names)
    if not id_names or not ood_names:
        raise DatasetError("data.id_classes and data.ood_classes must each name at least one digit")

    digits = load_digits()
    pixels = np.rint(digits.images * 255.0 / 16.0).clip(0, 255).astype(np.uint8)  # N x 8 x 8
    loader = ArrayImages({"digits": pixels})
    target_names = [str(int(t)) for t in digits.target]

    id_rows = np.array([i for i, n in enumerate(target_names) if n in id_names])
    ood_rows = np.array([i for i, n in enumerate(target_names) if n in ood_names])
    id_labels = np.array([id_names.index(target_names[i]) for i in id_rows], dtype=np.int64)
    train, val, test = split_id_pool(id_labels, cfg["test_fraction"], cfg["val_fraction"], cfg["seed"],
                                     id_names, "ID digit images")

    def make(rows: np.ndarray, labels: np.ndarray) -> ImageSplit:
        return ImageSplit([f"digits/{r}" for r in rows], labels, [target_names[r] for r in rows], loader)

    splits = {
        TRAIN_ID: make(id_rows[train], id_labels[train]),
        VAL_ID: make(id_rows[val], id_labels[val]),
        TEST_ID: make(id_rows[test], id_labels[test]),
    }
    return DataSplits("digits", id_names, ood_names, splits, make(ood_rows, np.full(len(ood_rows), -1, dtype=np.int64)))
