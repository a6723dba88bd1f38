"""Image loading: any file or array -> RGB PIL image, with a clear error for a bad file; fast DCT-domain
decoding at the smallest scale a model needs (`load_rgb_at_least`); image folders listed (`list_images`).

Item sources (the strings `ImageSplit.sources` holds) come in two kinds, each with a loader:

* `FileImages`: a path, optionally with a crop box appended, ``"<path>#box=x0,y0,x1,y1"``
  (integer pixels, x1/y1 exclusive, in the image as displayed, i.e. after EXIF orientation).
* `ArrayImages`: ``"<key>/<index>"``, e.g. ``"digits/123"`` or ``"cifar10/test/42"``: row
  ``index`` of the uint8 array stored under ``key``.

Loaders are plain classes (not closures) so datasets pickle into DataLoader worker processes.
"""
from __future__ import annotations

import math
import os
import re
import struct
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps

from wildcapture.errors import DatasetError
from wildcapture.megadetector import pixel_box

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


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})


def list_class_folders(folder: Path) -> list[str]:
    """Names of the non-hidden sub-folders of ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(class_dir: Path) -> list[Path]:
    """Image files anywhere under ``class_dir`` (by extension, case-insensitive), sorted, hidden ones skipped."""
    return sorted(p for p in class_dir.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))


# Fast decoding for a model: decode a JPEG in the DCT domain at the smallest scale its input size allows.
#
# A 2048x1152 camera-trap JPEG takes ~43 ms to decode in full on one core; libjpeg can instead decode it at
# 1/2, 1/4 or 1/8 scale (`PIL.Image.draft`), ~12 ms at 1/4. A model needs only its input size of the image
# or detection crop (224 px for ViT-B/16, 16 px for the digits model). `load_rgb_at_least` decodes at the
# smallest scale at which the crop still has at least that many pixels on each side, so the eval transform
# (`transforms.build_transforms`: resize so that the crop covers H x W, then centre crop) never upsamples
# where a full decode would not have. Other formats are decoded in full (draft is a no-op); the crop is the same.
#
# Boxes are MegaDetector's: normalised [x, y, w, h] (top-left corner, width, height as fractions of the
# image's width and height) of the image as displayed, i.e. after its EXIF orientation.

DRAFT_REDUCTIONS = (8, 4, 2, 1)  # the scales 1/k libjpeg decodes at (Image.draft), smallest scale first

Box = tuple[float, float, float, float]
PixelBox = tuple[int, int, int, int]


def decode_scale(crop_size: tuple[float, float], min_size: int | tuple[int, int]) -> float:
    """Return the smallest decoding scale (1, 1/2, 1/4 or 1/8) at which a crop of ``crop_size`` = (width,
    height) full-resolution pixels still measures at least ``min_size`` pixels: an int for a square model
    input, or (height, width) as `build_transforms`' ``input_size``.

    Returns 1 when even the full-resolution crop is smaller than ``min_size`` (the transform upsamples it).
    """
    min_height, min_width = (min_size, min_size) if isinstance(min_size, int) else min_size
    width, height = crop_size
    return next((1 / k for k in DRAFT_REDUCTIONS if width / k >= min_width and height / k >= min_height), 1.0)


def _scale_box(box: PixelBox, full_size: tuple[int, int], size: tuple[int, int]) -> PixelBox:
    """Return pixel ``box`` of an image of ``full_size`` = (width, height) mapped onto the same image decoded
    at ``size``, rounded outwards (so the scaled crop is never smaller than ``box`` times the scale)."""
    (x0, y0, x1, y1), (full_width, full_height), (width, height) = box, full_size, size
    return (x0 * width // full_width, y0 * height // full_height,
            -(-x1 * width // full_width), -(-y1 * height // full_height))


def load_rgb_at_least(path: str | Path, box: Box | None, min_size: int | tuple[int, int],
                      margin: float = 0.0) -> Image.Image:
    """Return the crop ``box`` (None: the whole image) of the image file at ``path`` as an RGB PIL image,
    decoded at the smallest scale (`decode_scale`) that keeps the crop at least ``min_size`` pixels.

    ``box``: normalised [x, y, w, h] of the image as displayed (after EXIF orientation), widened by
    ``margin`` x its width (height) on each side and clipped to the image (`megadetector.pixel_box`, the
    rule training crops use too). ``min_size``: the model's input size, an int or (height, width). The
    result is a reduced-scale version of `images.load_rgb` + crop, the same pixels exactly when the scale
    is 1; at scale 1/k the crop is the box rounded outwards to whole decoded pixels (up to k - 1 more
    full-resolution pixels on each side), never smaller than ``min_size`` unless the full-resolution crop is.

    Raises DatasetError naming ``path`` if the file is missing, empty, truncated or not an image, or if
    ``box`` is not finite.
    """
    image, full_size, pixels = decode_reduced(path, box, margin,
                                              lambda _full, crop: round(1 / decode_scale(crop, min_size)))
    # scale by the size actually decoded: a JPEG draft gives ceil(size / k), other formats the full size
    return image if box is None else image.crop(_scale_box(pixels, full_size, image.size))


def decode_reduced(path: str | Path, box: Box | None, margin: float,
                   reduction_for: Callable[[tuple[int, int], tuple[int, int]], int]
                   ) -> tuple[Image.Image, tuple[int, int], PixelBox]:
    """Decode the image file at ``path`` as displayed (EXIF orientation applied), in RGB, at the JPEG draft scale
    1/k, k = ``reduction_for(full size, crop size)`` (1, 2, 4 or 8; other formats decode whole).

    ``box``, ``margin``: as `load_rgb_at_least`'s (None: the whole image). Returns (the decoded image, the full
    displayed size (width, height), the crop's pixel box (x0, y0, x1, y1) at that full size). Raises
    DatasetError naming ``path`` if the file cannot be read, or if ``box`` is not finite.
    """
    if box is not None and not all(math.isfinite(v) for v in box):
        raise DatasetError(f"box {box} of image {path} is not finite; fix the detection")
    with open_image(path) as image:
        full_size = displayed_size(image)
        pixels = (0, 0, *full_size) if box is None else pixel_box(box, full_size, margin)
        reduction = reduction_for(full_size, (pixels[2] - pixels[0], pixels[3] - pixels[1]))
        if reduction > 1:  # stored size // k makes draft pick 1/k exactly; a rounded-up size may get 1/(k/2)
            image.draft("RGB", (max(1, image.width // reduction), max(1, image.height // reduction)))
        image.load()
        return to_rgb(ImageOps.exif_transpose(image)), full_size, pixels
