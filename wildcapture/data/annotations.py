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
"""
from __future__ import annotations

import csv
from pathlib import Path

from .errors import DatasetError

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
