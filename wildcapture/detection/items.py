"""What a detection run scores: one item per qualifying MegaDetector box, or per image of a folder.

Items are listed in a fixed order (the JSON's image order and each image's detection order; a
folder's sorted paths), so a resumed or multi-process run meets them in the same order as a single
uninterrupted one. Images that are not scored still get one item, with the reason in `skip`:
MegaDetector's failures and images without an animal box at or above the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wildcapture.data.wildcapture_folders import list_images
from wildcapture.errors import DatasetError

EMPTY = "empty"


@dataclass(frozen=True)
class Item:
    """One row of the output: `image` as named there, `path` to read, the MegaDetector detection it
    crops (`detection` index in the image's list, normalised `bbox` [x, y, w, h], `conf`) or None for
    the whole image, and `skip`: why it is not scored ("" when it is)."""

    image_index: int
    image: str
    path: str
    detection: int | None = None
    bbox: tuple[float, float, float, float] | None = None
    conf: float | None = None
    skip: str = ""


def folder_items(folder: Path) -> list[Item]:
    """One whole-image item per image file under `folder` (recursively, sorted).

    Raises DatasetError naming the folder when it is missing or holds no image.
    """
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"no .jpg/.jpeg/.png images in {folder}")
    return [Item(i, str(path), str(path)) for i, path in enumerate(paths)]
