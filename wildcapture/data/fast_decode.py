"""Fast decoding for a model: decode a JPEG in the DCT domain at the smallest scale its input size allows.

A 2048x1152 camera-trap JPEG takes ~43 ms to decode in full on one core; libjpeg can instead decode it at
1/2, 1/4 or 1/8 scale (`PIL.Image.draft`), ~12 ms at 1/4. A model needs only its input size of the image
or detection crop (224 px for ViT-B/16, 16 px for the digits model). `load_rgb_at_least` decodes at the
smallest scale at which the crop still has at least that many pixels on each side, so the eval transform
(`transforms.build_transforms`: resize so that the crop covers H x W, then centre crop) never upsamples
where a full decode would not have. Other formats are decoded in full (draft is a no-op); the crop is the same.

Boxes are MegaDetector's: normalised [x, y, w, h] (top-left corner, width, height as fractions of the
image's width and height) of the image as displayed, i.e. after its EXIF orientation.
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageOps

from wildcapture.errors import DatasetError
from wildcapture.megadetector import pixel_box

from .images import displayed_size, open_image, to_rgb

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
    if box is not None and not all(math.isfinite(v) for v in box):
        raise DatasetError(f"box {box} of image {path} is not finite; fix the detection")
    with open_image(path) as image:
        full_size = displayed_size(image)
        pixels = (0, 0, *full_size) if box is None else pixel_box(box, full_size, margin)
        x0, y0, x1, y1 = pixels
        reduction = round(1 / decode_scale((x1 - x0, y1 - y0), min_size))
        if reduction > 1:  # stored size // k makes draft pick 1/k exactly; a rounded-up size may get 1/(k/2)
            image.draft("RGB", (max(1, image.width // reduction), max(1, image.height // reduction)))
        image.load()
        image = to_rgb(ImageOps.exif_transpose(image))
    # scale by the size actually decoded: a JPEG draft gives ceil(size / k), other formats the full size
    return image if box is None else image.crop(_scale_box(pixels, full_size, image.size))
