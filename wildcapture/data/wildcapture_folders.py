"""Class-folder data sets: `wildcapture` (the paper's camera-trap species) and generic `imagefolder`.

Layout: one folder per class, images (.jpg/.jpeg/.png, any case) anywhere inside it; hidden files
and folders (name starting with ".") are skipped. wildcapture reads ``<root>/WildCapture/<Species>/``,
imagefolder reads ``<root>/<class>/``. Class names match folder names ignoring case, spaces, "_"
and "-". Files are never moved or copied; sources are their paths (``#box=`` appended for crops).

ID images are split stratified and seeded: ``test_fraction`` of them to test_id, then
``val_fraction`` of the rest to val_id. The split is by image, so the crops of one image always
share a split. Every image of an OOD class is held out (the `classes` OOD set). With ``annotations`` set, each
annotated box is one item, images a MegaDetector file marks empty or failed are left out, and the
other images are used whole (formats: `annotations` module).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from ..paths import resolve_path
from .annotations import Annotations, normalize_relpath, read_annotation_file
from .classes import check_disjoint, match_classes, normalize_class_name
from .images import FileImages, box_source, list_class_folders, list_images
from .split_folders import build_split_folders, split_layout
from .splits import DataSplits, ImageSplit, split_id_pool
from wildcapture.data.protocol import TEST_ID, TRAIN_ID, VAL_ID

MAX_LISTED = 50  # unreadable annotated images named in the error

PAPER_ID_SPECIES = ["Domestic Cattle", "Eurasian Badger", "European Hare", "Grey Wolf", "Red Deer", "Red Fox",
                    "Wild Boar"]
PAPER_OOD_SPECIES = ["Beech Marten", "Crested Porcupine", "Domestic Dog", "Domestic Horse", "European Roe Deer",
                     "Persian Fallow Deer", "Western Polecat", "Wild Cat"]
WILDCAPTURE_DOWNLOAD = ("https://drive.google.com/drive/folders/1823UnVK94NYRTokxkzBbgeYRVL8YSPG4 (linked from the "
                        "paper's repository github.com/lcultrera/WildCapture)")


def _class_items(folder: Path, class_folder: str, annotations: Annotations, used: set[str], unreadable: list[str]
                 ) -> list[list[str]]:
    """Sources of one class, grouped per image: [[source, ...] per image kept]. Adds the annotation keys
    hit to ``used``."""
    images = list_images(folder / class_folder)
    if not images:
        raise DatasetError(f"class folder {folder / class_folder} holds no .jpg/.jpeg/.png images")
    groups = []
    for path in images:
        key = normalize_relpath(path.relative_to(folder).as_posix())
        try:
            boxes = annotations.crop_boxes(key, path)
        except DatasetError as err:  # a MegaDetector box needs the image's size: collect every bad file
            unreadable.append(str(err))
            continue
        if boxes is None:
            groups.append([str(path)])
            continue
        used.add(key)
        if boxes:
            groups.append([box_source(path, box) for box in boxes])
    if not groups and not unreadable:
        raise DatasetError(f"annotation file {annotations.path} leaves out every image of class folder "
                           f"{folder / class_folder}, e.g. {key}: {annotations.skipped[key]}")
    return groups


def _check_annotations_used(folder: Path, annotations: Annotations, used: set[str]) -> None:
    """Annotated images of unused classes are fine; annotated paths that do not exist are an error
    (images a MegaDetector file leaves out are not checked)."""
    absent = [k for k in annotations.boxed_keys() if k not in used and not (folder / k).is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} image(s) in annotation file {annotations.path} do not exist under "
                           f"{folder}, e.g. {absent[:5]}; paths must be relative to {folder}")


def _report_skipped(annotations: Annotations, used: set[str]) -> None:
    """Print how many images of the data set the annotation file leaves out, and why."""
    reasons = Counter(annotations.skipped[k] for k in used if k in annotations.skipped)
    if reasons:
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        print(f"note: annotation file {annotations.path} leaves out {sum(reasons.values())} image(s) ({why})",
              flush=True)


def build_class_folder_benchmark(name: str, folder: Path, id_classes: Sequence[str],
                                 ood_classes: Sequence[str] | None, cfg: dict) -> DataSplits:
    """Build a data set from class folders under ``folder``.

    ``ood_classes`` None means every class folder not matched by ``id_classes``. Class names are
    reported as configured (folder names for defaulted OOD classes).
    """
    available = list_class_folders(folder)
    where = f"class folders in {folder}"
    id_names = [str(c) for c in id_classes]
    id_folders = match_classes(id_names, available, where, "id_classes")
    if ood_classes is None:
        ood_folders = [f for f in available if f not in id_folders]
        ood_names = list(ood_folders)
    else:
        ood_names = [str(c) for c in ood_classes]
        ood_folders = match_classes(ood_names, available, where, "ood_classes")
    check_disjoint(id_names, ood_names)
    if not id_names or not ood_names:
        raise DatasetError(f"need at least one ID and one OOD class; data.id_classes={id_names}, OOD={ood_names} "
                           f"(class folders found in {folder}: {available})")

    annotations = (read_annotation_file(resolve_path(cfg["annotations"]), folder) if cfg["annotations"]
                   else Annotations())
    used: set[str] = set()
    unreadable: list[str] = []
    id_groups = [_class_items(folder, f, annotations, used, unreadable) for f in id_folders]
    ood_groups = [_class_items(folder, f, annotations, used, unreadable) for f in ood_folders]
    if unreadable:
        listed = "\n  ".join(unreadable[:MAX_LISTED]) + (f"\n  ... and {len(unreadable) - MAX_LISTED} more"
                                                        if len(unreadable) > MAX_LISTED else "")
        raise DatasetError(f"{len(unreadable)} annotated image(s) cannot be read, so their boxes cannot be cropped; "
                           f"replace or delete them (and their entries in {annotations.path}):\n  {listed}")
    _check_annotations_used(folder, annotations, used)
    _report_skipped(annotations, used)

    loader = FileImages()
    image_sources = [g for groups in id_groups for g in groups]  # one entry per ID image
    image_labels = np.array([c for c, groups in enumerate(id_groups) for _ in groups], dtype=np.int64)
    train, val, test = split_id_pool(image_labels, cfg["test_fraction"], cfg["val_fraction"], cfg["seed"],
                                     id_names, f"ID images in {folder}")

    def make_id(image_rows: np.ndarray) -> ImageSplit:
        sources, labels = [], []
        for r in image_rows:
            sources += image_sources[r]
            labels += [int(image_labels[r])] * len(image_sources[r])
        return ImageSplit(sources, labels, [id_names[c] for c in labels], loader)

    ood_sources = [s for groups in ood_groups for g in groups for s in g]
    ood_item_names = [ood_names[c] for c, groups in enumerate(ood_groups) for g in groups for _ in g]
    splits = {
        TRAIN_ID: make_id(train),
        VAL_ID: make_id(val),
        TEST_ID: make_id(test),
    }
    held_out = ImageSplit(ood_sources, np.full(len(ood_sources), -1, dtype=np.int64), ood_item_names, loader)
    return DataSplits(name, id_names, ood_names, splits, held_out)


def find_wildcapture_folder(root: Path) -> Path:
    """Return ``<root>/WildCapture`` (its name matched ignoring case); DatasetError saying how to get it."""
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and normalize_class_name(child.name) == "wildcapture":
                return child
    raise DatasetError(
        f"WildCapture folder not found: looked for {root / 'WildCapture'}. Download the WildCapture camera-trap "
        f"dataset from {WILDCAPTURE_DOWNLOAD} and place it there as one folder per species, "
        f"e.g. {root / 'WildCapture' / 'Red Deer'}/*.jpg, or set data.root to the folder that contains WildCapture/")


def _check_species_folders(folder: Path, species: Sequence[str]) -> None:
    """Raise DatasetError naming the species of ``species`` that have no folder in ``folder``, and where to get them."""
    available = list_class_folders(folder)
    present = {normalize_class_name(name) for name in available}
    missing = [str(name) for name in species if normalize_class_name(name) not in present]
    if missing:
        raise DatasetError(
            f"WildCapture species folder(s) {missing} (data.id_classes / data.ood_classes) not found in {folder}; "
            f"folders there: {available}. Expected one folder per species, e.g. {folder / 'Red Deer'}/*.jpg; "
            f"the dataset is at {WILDCAPTURE_DOWNLOAD}")


def build_wildcapture(cfg: dict) -> DataSplits:
    """The WildCapture data set; default ID/OOD species are the paper's 7/8 split."""
    folder = find_wildcapture_folder(resolve_path(cfg["root"]))
    id_classes = cfg["id_classes"] if cfg["id_classes"] is not None else PAPER_ID_SPECIES
    ood_classes = cfg["ood_classes"] if cfg["ood_classes"] is not None else PAPER_OOD_SPECIES
    _check_species_folders(folder, [*id_classes, *ood_classes])
    return build_class_folder_benchmark("wildcapture", folder, id_classes, ood_classes, cfg)


def build_imagefolder(cfg: dict) -> DataSplits:
    """A generic class-folder data set at ``root``; id_classes is required, OOD defaults to the other folders.

    A root holding ``train/`` and ``test/`` (or ``val/``) class folders is used as split (`split_folders`); there
    id_classes defaults to every training class."""
    folder = resolve_path(cfg["root"])
    if not folder.is_dir():
        raise DatasetError(f"imagefolder root not found: {folder}; set data.root to a folder of class folders")
    layout = split_layout(folder)
    if layout is not None:
        return build_split_folders("imagefolder", *layout, cfg["id_classes"], cfg["ood_classes"], cfg)
    if cfg["id_classes"] is None:
        raise DatasetError(f"data.id_classes is required for imagefolder; class folders in {folder}: "
                           f"{list_class_folders(folder)}")
    return build_class_folder_benchmark("imagefolder", folder, cfg["id_classes"], cfg["ood_classes"], cfg)
