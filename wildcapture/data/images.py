"""Image loading: any file or array -> RGB PIL image, with a clear error for a bad file.

Item sources (the strings `ImageSplit.sources` holds) come in two kinds, each with a loader:

* `FileImages`: a path, optionally with a crop box appended, ``"<path>#box=x0,y0,x1,y1"``
  (integer pixels, x1/y1 exclusive, in the image as displayed, i.e. after EXIF orientation).
* `ArrayImages`: ``"<key>/<index>"``, e.g. ``"digits/123"`` or ``"cifar10/test/42"``: row
  ``index`` of the uint8 array stored under ``key``.

Loaders are plain classes (not closures) so datasets pickle into DataLoader worker processes.
"""
from __future__ import annotations

import os
import re
import struct
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps

from wildcapture.errors import DatasetError

_BOX_RE = re.compile(r"^(?P<path>.*)#box=(?P<box>-?\d+,-?\d+,-?\d+,-?\d+)$")
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
# What PIL raises on a damaged file (struct.error: a corrupt EXIF block); a bug or MemoryError stays itself.
DAMAGED_FILE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def box_source(path: str | Path, box: tuple[int, int, int, int]) -> str:
    """Return the source string of crop ``box`` = (x0, y0, x1, y1) pixels of the image at ``path``."""
    return f"{path}#box={','.join(str(int(v)) for v in box)}"


def parse_source(source: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """Split a file source into (path, box or None)."""
    match = _BOX_RE.match(source)
    if match is None:
        return source, None
    x0, y0, x1, y1 = (int(v) for v in match["box"].split(","))
    return match["path"], (x0, y0, x1, y1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L night-IR, P, CMYK, RGBA, LA, 16-bit I;16/I, F) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # convert("RGB") would clip 16-bit values at 255; rescale to the 8-bit range instead
        array = np.asarray(image, dtype=np.float64)
        if array.max(initial=0) > 255:
            array = array / 65535.0 * 255.0
        return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the direct P -> RGB conversion warns about byte transparency
    return image.convert("RGB")  # alpha is dropped, not composited


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open an image file lazily (header read, pixels not yet decoded) and yield the PIL image.

    Warnings (e.g. corrupt EXIF on camera-trap JPEGs) are silenced inside the block; a missing, unreadable,
    truncated or non-image file, whether found on opening or while decoding in the block, raises
    DatasetError naming ``path``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                yield image
    except DAMAGED_FILE_ERRORS as exc:
        raise DatasetError(f"cannot read image {path}: {_problem(path, exc)}. Replace or delete this file.") from exc


def _problem(path: str | Path, exc: BaseException) -> str:
    """What is wrong with the image file at `path` that made PIL raise `exc`: "empty file (0 bytes)" for an
    empty file (PIL says it "cannot identify" it), else PIL's message."""
    with suppress(OSError):
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    return str(exc) or type(exc).__name__


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """Return the (width, height) in pixels of opened ``image`` as displayed, i.e. after its EXIF orientation."""
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def read_displayed_size(path: str | Path) -> tuple[int, int]:
    """Return `displayed_size` of the image file at ``path``, read from its header without decoding the
    pixels (except a PNG's: PIL reads a PNG's EXIF after its pixel data). DatasetError names a bad file."""
    with open_image(path) as image:
        return displayed_size(image)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file and return it as an RGB PIL image (H x W x 3, uint8), EXIF orientation applied.

    Raises DatasetError naming ``path`` if the file is missing, unreadable, truncated or not an image.
    """
    with open_image(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def clip_box(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Return ``box`` = (x0, y0, x1, y1) clipped to an image of ``size`` = (width, height), or None when
    nothing of it lies inside the image."""
    x0, y0, x1, y1 = box
    width, height = size
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def crop_box(image: Image.Image, box: tuple[int, int, int, int], source: str) -> Image.Image:
    """Return ``image`` cropped to ``box`` clipped to the image bounds; DatasetError if nothing is left."""
    clipped = clip_box(box, image.size)
    if clipped is None:
        width, height = image.size
        raise DatasetError(f"crop box {box} lies outside the {width}x{height} image {source}; fix the annotation")
    return image.crop(clipped)


class FileImages:
    """Loader of file sources: ``path`` or ``path#box=x0,y0,x1,y1`` -> RGB PIL image (cropped)."""

    def __call__(self, source: str) -> Image.Image:
        path, box = parse_source(source)
        image = load_rgb(path)
        return image if box is None else crop_box(image, box, source)


class ArrayImages:
    """Loader of array sources ``"<key>/<index>"``: ``arrays[key][index]`` -> RGB PIL image.

    Each array is uint8, N x H x W (grayscale) or N x H x W x 3 (RGB).
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __call__(self, source: str) -> Image.Image:
        key, _, index = source.rpartition("/")
        if key not in self.arrays or not index.isdigit():
            raise DatasetError(f"unknown array image source {source!r}; known keys: {sorted(self.arrays)}")
        return Image.fromarray(np.ascontiguousarray(self.arrays[key][int(index)])).convert("RGB")
