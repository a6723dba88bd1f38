"""What a detection run scores: one item per qualifying MegaDetector box, or per image of a folder.

Both inputs become an `MDBatch` (a folder through `megadetector.whole_image_batch`: one whole-image
detection per image), which the JSON output is written from. Items are listed in a fixed order (the
batch's image order and each image's detection order; a folder's sorted paths), so a resumed or
multi-process run meets them in the same order as a single uninterrupted one. Images that are not
scored still get one item, with the reason in `skip`: MegaDetector's failures and images without an
animal box at or above the threshold ("empty: ...").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wildcapture.data.wildcapture_folders import list_images
from wildcapture.errors import DatasetError
from wildcapture.megadetector import MDBatch, read_md_json, whole_image_batch

EMPTY = "empty"


@dataclass(frozen=True)
class Item:
    """One row of the output: image `image_index` of the batch, named `image` (its `file`), read from
    `path`; the detection it crops (`detection` index in the image's list, normalised `bbox` [x, y, w,
    h], `conf`; `bbox` and `conf` None for a whole image) and `skip`: why it is not scored ("" when it is)."""

    image_index: int
    image: str
    path: str
    detection: int | None = None
    bbox: tuple[float, float, float, float] | None = None
    conf: float | None = None
    skip: str = ""


def folder_batch(folder: Path) -> MDBatch:
    """The images under `folder` (recursively, sorted) as a whole-image batch; DatasetError naming the
    folder when it is missing or holds no image."""
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"no .jpg/.jpeg/.png images in {folder}")
    return whole_image_batch(folder, [p.relative_to(folder).as_posix() for p in paths])


def load_batch(source: Path, threshold: float) -> MDBatch:
    """The batch of `source`: a MegaDetector JSON (animal boxes with conf >= `threshold` qualify) or a folder."""
    return read_md_json(source, threshold) if source.suffix.lower() == ".json" else folder_batch(source)


def batch_items(batch: MDBatch, image_root: Path, whole_images: bool) -> list[Item]:
    """The items of `batch`, images read from `image_root / file`; `whole_images`: the batch's detections
    are whole-image stand-ins (folder input), scored without a crop."""
    items = []
    for i, image in enumerate(batch.images):
        path = str(image_root / image.file)
        if image.failure is not None:
            items.append(Item(i, image.file, path, skip=f"megadetector: {image.failure}"))
        elif not image.detections:
            items.append(Item(i, image.file, path, skip=f"{EMPTY}: no animal detection with conf >= "
                                                             f"{batch.threshold:g}"))
        elif whole_images:
            items.append(Item(i, image.file, path, detection=image.detections[0].index))
        else:
            items.extend(Item(i, image.file, path, det.index, det.bbox, det.conf) for det in image.detections)
    return items
