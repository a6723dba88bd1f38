"""Bounding-box annotation files for class-folder datasets (wildcapture, imagefolder).

Format: a CSV file with the header ``path,x_min,y_min,x_max,y_max`` (more columns are allowed
and ignored). ``path`` is the image path relative to the dataset folder (for wildcapture the
``WildCapture`` folder, e.g. ``Red Deer/IMG_0001.JPG``; ``/`` or ``\\`` separators). The box is
in pixels of the original image as displayed (after EXIF orientation), x_max/y_max exclusive;
numbers may be fractional and are rounded. Several rows for one image = several animals =
several items. Example::

    path,x_min,y_min,x_max,y_max
    Red Deer/IMG_0001.JPG,120,340,860,1010
    Red Deer/IMG_0001.JPG,900,300,1400,980

A file ending in ``.json`` is read as MegaDetector batch output (`wildcapture.megadetector`): each
animal box with ``conf`` >= `wildcapture.megadetector.TYPICAL_THRESHOLD` (0.2) is one item, cropped
to `wildcapture.megadetector.pixel_box` of the image's size as displayed (read from the file header when
the image is used). ``file`` paths are relative to the dataset folder; absolute ones inside it are made
relative. An image MegaDetector found no such box in (most likely empty) or failed on is left out of
the data set; the builder prints how many. Images absent from either kind of file are used whole.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from wildcapture.errors import DatasetError
from wildcapture.megadetector import TYPICAL_THRESHOLD, BBox, pixel_box, read_md_json

from .images import read_displayed_size

ANNOTATION_COLUMNS = ("path", "x_min", "y_min", "x_max", "y_max")
Box = tuple[int, int, int, int]


def normalize_relpath(path: str) -> str:
    """Canonical relative path key: forward slashes, no leading ``./``."""
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def read_annotations(csv_path: Path) -> dict[str, list[Box]]:
    """Read an annotation CSV; return {relative image path: [(x0, y0, x1, y1), ...]} in file order.

    Raises DatasetError naming the file (and line) for a missing file, a bad header or a bad box.
    """
    if not csv_path.is_file():
        raise DatasetError(f"annotation file not found: {csv_path} (set data.annotations to the CSV, or null)")
    boxes: dict[str, list[Box]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ANNOTATION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"annotation file {csv_path} lacks column(s) {missing}; "
                               f"its header must be {','.join(ANNOTATION_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                x0, y0, x1, y1 = (int(round(float(row[c]))) for c in ANNOTATION_COLUMNS[1:])
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{csv_path}, line {line}: box values must be numbers ({exc})") from exc
            if not row["path"] or x1 <= x0 or y1 <= y0:
                raise DatasetError(f"{csv_path}, line {line}: needs a path and x_min < x_max, y_min < y_max; "
                                   f"got {dict(row)}")
            boxes.setdefault(normalize_relpath(row["path"]), []).append((x0, y0, x1, y1))
    return boxes


@dataclass
class Annotations:
    """The crop boxes of an annotation file, keyed by image path relative to the dataset folder
    (`normalize_relpath`): pixel boxes (CSV) or MegaDetector's normalised boxes, and the images to
    leave out with the reason why."""

    path: Path | None = None
    pixel: dict[str, list[Box]] = field(default_factory=dict)
    normalised: dict[str, list[BBox]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def boxed_keys(self) -> list[str]:
        """Keys of the images that have boxes."""
        return [*self.pixel, *self.normalised]

    def crop_boxes(self, key: str, image_path: Path) -> list[Box] | None:
        """Return the pixel boxes of image ``key`` (file ``image_path``): None when the file does not
        mention the image (use it whole), an empty list when the image is to be left out."""
        if key in self.pixel:
            return self.pixel[key]
        if key in self.normalised:
            size = read_displayed_size(image_path)
            return [pixel_box(bbox, size) for bbox in self.normalised[key]]
        return [] if key in self.skipped else None


def _folder_key(file: str, folder: Path, json_path: Path) -> str:
    """Key of a MegaDetector ``file``: the path relative to ``folder`` (an absolute one must lie inside it)."""
    key = PurePosixPath(normalize_relpath(file))
    if not key.is_absolute():
        return str(key)
    try:
        return str(key.relative_to(folder.as_posix()))
    except ValueError:
        raise DatasetError(f"MegaDetector file {json_path} names {file}, outside the dataset folder {folder}; "
                           "its paths must be relative to that folder or inside it") from None


def read_megadetector_annotations(json_path: Path, folder: Path, threshold: float = TYPICAL_THRESHOLD
                                  ) -> Annotations:
    """Read a MegaDetector file as `Annotations`: the animal boxes of ``conf`` >= ``threshold`` per image;
    images without one, and images MegaDetector failed on, are skipped."""
    annotations = Annotations(json_path)
    for image in read_md_json(json_path, threshold).images:
        key = _folder_key(image.file, folder, json_path)
        if image.failure is not None:
            annotations.skipped[key] = "MegaDetector failed on it"
        elif not image.detections:
            annotations.skipped[key] = f"no animal box with conf >= {threshold}"
        else:
            annotations.normalised[key] = [d.bbox for d in image.detections]
    return annotations


def read_annotation_file(path: Path, folder: Path) -> Annotations:
    """Read the annotation file at ``path`` (a MegaDetector ``.json`` or a CSV) for the dataset ``folder``."""
    if path.suffix.lower() == ".json":
        return read_megadetector_annotations(path, folder)
    return Annotations(path, pixel=read_annotations(path))
