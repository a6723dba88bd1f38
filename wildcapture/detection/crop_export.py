"""`--export-crops DIR`: the flagged crops of a finished run as JPEG files to sort and label, for the loop
back into training (every scored crop with `--export-all`).

A crop is cut from the full-resolution image (box widened by `--crop-margin`, as training crops a
MegaDetector box, `megadetector.pixel_box`) and written as `DIR/<label>/<name>.jpg`: the unknown label
for a flagged detection, else the predicted class. `DIR/manifest.csv` (MANIFEST_COLUMNS) lists every
crop written, and is written last. The name is readable (`crop_name`); where that of an earlier crop of the
run already took it (images whose names differ only in characters it replaces, e.g. ``a\\b.jpg`` and
``a_b.jpg``), a digest of the image's path is added, so no crop overwrites another.
"""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from wildcapture.data.images import load_rgb
from wildcapture.detection.report import merged_rows
from wildcapture.detection.season import Item
from wildcapture.errors import DatasetError
from wildcapture.megadetector import pixel_box
from wildcapture.storage import atomic_write

MANIFEST_COLUMNS = ("crop_file", "label", "source_image", "detection", "bbox", "predicted_class", "confidence",
                    "ood_score", "unknown_confidence")
JPEG_QUALITY = 95


def crop_name(item: Item, distinct: bool = False) -> str:
    """A file name for the crop of `item`: the image's path without its extension, separators as "__" and
    other characters than letters, digits, "." and "-" as "_", then the detection index. `distinct` adds
    a digest of the image's path, for a name an earlier crop of the run took (see the module docstring)."""
    stem = re.sub(r"[^\w.-]+", "_", item.image.rsplit(".", 1)[0].replace("/", "__"))
    if distinct:
        stem += "-" + hashlib.blake2b(item.image.encode(), digest_size=4).hexdigest()
    return f"{stem}__d{item.detection}.jpg"


def _save_crop(item: Item, margin: float, path: Path) -> None:
    image = load_rgb(item.path)
    if item.bbox is not None:
        image = image.crop(pixel_box(item.bbox, image.size, margin))
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0))


def export_crops(parts: Sequence[Path], items: Sequence[Item], folder: Path, unknown_label: str, margin: float,
                 export_all: bool) -> int:
    """Write the crops of the run's scored rows (`parts`, the processes' rows files) that are flagged (or all)
    under `folder`, then `folder/manifest.csv`; returns the number written. A file that can no longer be read
    is left out with a note."""
    written = 0
    taken: set[bytes] = set()  # 8-byte digests of the names given (lower case: as a case-blind disk sees them)

    def write(tmp: Path) -> None:
        nonlocal written
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            manifest = csv.writer(handle)
            manifest.writerow(MANIFEST_COLUMNS)
            for row in tqdm(merged_rows(parts), desc="export crops", unit="row"):
                flagged = row["ood_flag"] == "True"
                if row["failure"] or not (flagged or export_all):
                    continue
                item = items[int(row["item"])]
                label = unknown_label if flagged else row["predicted_class"].replace("/", "_")
                relative = f"{label}/{crop_name(item)}"
                if _digest(relative) in taken:
                    relative = f"{label}/{crop_name(item, distinct=True)}"
                taken.add(_digest(relative))
                try:
                    _save_crop(item, margin, folder / relative)
                except DatasetError as err:
                    print(f"note: crop of {item.image} not exported: {err}", flush=True)
                    continue
                manifest.writerow([relative, label, item.image, item.detection, row["bbox"], row["predicted_class"],
                                   row["confidence"], row["ood_score"], row["unknown_confidence"]])
                written += 1

    atomic_write(folder / "manifest.csv", write)
    return written


def _digest(relative: str) -> bytes:
    return hashlib.blake2b(relative.lower().encode(), digest_size=8).digest()
