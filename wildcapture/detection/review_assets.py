"""The review page's three JPEGs per detection, written while the images stream (see `review_page`).

For item ``i`` the folder beside ``X.html`` (`review_folder`, ``X_review/``) holds:

* ``{i:06d}-crop.jpg``: the crop the classifier saw before its eval transform (the detection box widened by
  the crop margin, as `megadetector.pixel_box` does; the whole image for a folder input), at most
  `CROP_MAX` px on its long side;
* ``{i:06d}-attention.jpg``: that crop with the attention map the CAE scored laid over the centre crop the
  model saw (`transforms.centre_crop_box`), colour-mapped and outlined;
* ``{i:06d}-full.jpg``: the whole image, at most `FULL_MAX` px on its long side, with the detection box
  (MegaDetector's, without the margin) drawn in red.

Each file is written atomically, so a resumed run can keep every file it finds (`has_review_assets`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageOps

from wildcapture.data.fast_decode import decode_scale
from wildcapture.data.images import displayed_size, open_image, to_rgb
from wildcapture.data.transforms import centre_crop_box
from wildcapture.errors import DatasetError
from wildcapture.heatmaps.channels import display_map
from wildcapture.megadetector import pixel_box
from wildcapture.storage import atomic_write

ASSET_KINDS = ("crop", "attention", "full")
CROP_MAX = 200  # px, long side of the crop and attention thumbnails
FULL_MAX = 800  # px, long side of the full image
JPEG_QUALITY = 85
OVERLAY_ALPHA = 0.5
OVERLAY_CMAP = "jet"  # as heatmaps/gallery.py's overlay
BOX_COLOUR, BOX_WIDTH = (255, 0, 0), 3
OUTLINE_COLOUR = (255, 255, 255)

Box = tuple[float, float, float, float]
PixelBox = tuple[int, int, int, int]


def review_folder(out_html: Path) -> Path:
    """Return the folder of the page's thumbnails and card files: ``X_review/`` beside ``X.html``."""
    out_html = Path(out_html)
    return out_html.with_name(f"{out_html.stem}_review")


def asset_file_name(item: int, kind: str) -> str:
    """Return the file name of item ``item``'s thumbnail ``kind`` (one of `ASSET_KINDS`), e.g.
    ``000123-crop.jpg``."""
    if kind not in ASSET_KINDS or item < 0:
        raise ValueError(f"no review asset {kind!r} for item {item}; kinds: {ASSET_KINDS}, items >= 0")
    return f"{item:06d}-{kind}.jpg"


def asset_names(item: int, out_html: Path) -> dict[str, str]:
    """Return {kind: path of that thumbnail relative to the page's folder} for each of `ASSET_KINDS`, e.g.
    ``{"crop": "X_review/000123-crop.jpg", ...}`` for the page ``X.html`` (a file path, not URL-quoted)."""
    folder = review_folder(Path(out_html)).name
    return {kind: f"{folder}/{asset_file_name(item, kind)}" for kind in ASSET_KINDS}


def has_review_assets(folder: Path, item: int) -> bool:
    """Return True when ``folder`` holds all three thumbnails of ``item`` (what a resumed run keeps)."""
    return all((Path(folder) / asset_file_name(item, kind)).is_file() for kind in ASSET_KINDS)


def fit_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """Return ``size`` = (width, height) scaled, aspect kept, so that its long side is at most ``longest``
    pixels (never enlarged; each side at least 1 px)."""
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def write_review_assets(folder: Path, item: int, image_path: str, bbox: Box | None, margin: float,
                        heatmap: np.ndarray, input_size: Sequence[int]) -> None:
    """Write item ``item``'s three thumbnails (module docstring) into ``folder``, each atomically.

    ``bbox``: MegaDetector's normalised [x, y, w, h] (None: the whole image); ``margin``: the crop margin
    detect uses; ``heatmap``: the (h, w) map the CAE scored ((C, h, w): the channel mean is shown);
    ``input_size``: the model's input (H, W). The image is decoded once, at the smallest JPEG scale that
    still gives both thumbnails their full size. Raises DatasetError naming ``image_path`` when it cannot be
    read or ``bbox`` is not finite.
    """
    if bbox is not None and not all(math.isfinite(v) for v in bbox):
        raise DatasetError(f"box {bbox} of image {image_path} is not finite; fix the detection")
    with open_image(image_path) as image:
        full_size = displayed_size(image)
        crop_box = (0, 0, *full_size) if bbox is None else pixel_box(bbox, full_size, margin)
        crop_size = (crop_box[2] - crop_box[0], crop_box[3] - crop_box[1])
        reduction = _reduction(full_size, crop_size)
        if reduction > 1:  # stored size // k makes draft pick 1/k exactly (as fast_decode does)
            image.draft("RGB", (max(1, image.width // reduction), max(1, image.height // reduction)))
        image.load()
        decoded = to_rgb(ImageOps.exif_transpose(image))
    scale = (decoded.width / full_size[0], decoded.height / full_size[1])
    crop = decoded.resize(fit_size(crop_size, CROP_MAX), Image.Resampling.BILINEAR,
                          box=_scaled(crop_box, scale))
    full = decoded.resize(fit_size(full_size, FULL_MAX), Image.Resampling.BILINEAR)
    del decoded  # only the thumbnails from here on
    if bbox is not None:
        _draw_box(full, pixel_box(bbox, full_size), (full.width / full_size[0], full.height / full_size[1]))
    attention = overlay_attention(crop, crop_size, heatmap, input_size)
    for kind, thumb in (("crop", crop), ("attention", attention), ("full", full)):
        _save_jpeg(thumb, Path(folder) / asset_file_name(item, kind))


def _reduction(full_size: tuple[int, int], crop_size: tuple[int, int]) -> int:
    """Return the JPEG draft reduction k (1, 2, 4 or 8) that still gives the full view `FULL_MAX` px and the
    crop `CROP_MAX` px (or their whole size when smaller)."""
    full_w, full_h = fit_size(full_size, FULL_MAX)
    crop_w, crop_h = fit_size(crop_size, CROP_MAX)
    scale = max(decode_scale(full_size, (full_h, full_w)), decode_scale(crop_size, (crop_h, crop_w)))
    return round(1 / scale)


def _scaled(box: Box, scale: tuple[float, float]) -> Box:
    """Return pixel ``box`` (x0, y0, x1, y1) multiplied by ``scale`` = (sx, sy), as floats."""
    x0, y0, x1, y1 = box
    return x0 * scale[0], y0 * scale[1], x1 * scale[0], y1 * scale[1]


def _draw_box(image: Image.Image, box: PixelBox, scale: tuple[float, float]) -> None:
    """Draw full-resolution pixel ``box`` in red on ``image``, its copy at ``scale``; the rectangle's
    outer edge runs along the box's outer pixels."""
    x0, y0, x1, y1 = _scaled(box, scale)
    right, bottom = max(math.floor(x0), math.ceil(x1) - 1), max(math.floor(y0), math.ceil(y1) - 1)
    ImageDraw.Draw(image).rectangle((math.floor(x0), math.floor(y0), right, bottom), outline=BOX_COLOUR,
                                    width=BOX_WIDTH)


def overlay_attention(crop: Image.Image, crop_size: tuple[int, int], heatmap: np.ndarray,
                      input_size: Sequence[int]) -> Image.Image:
    """Return a copy of thumbnail ``crop`` (of a crop of ``crop_size`` = (width, height) full-resolution px)
    with ``heatmap`` ((h, w), or (C, h, w) shown as its channel mean) laid over the centre crop the model
    saw: values min..max (the map's own range, so where the model looks stands out) mapped through `OVERLAY_CMAP`, upsampled bilinearly, blended at `OVERLAY_ALPHA`, and
    that region outlined in white."""
    x0, y0, x1, y1 = _scaled(centre_crop_box(*crop_size, input_size),
                             (crop.width / crop_size[0], crop.height / crop_size[1]))
    left, top = round(x0), round(y0)
    right, bottom = max(round(x1), left + 1), max(round(y1), top + 1)
    shown = np.asarray(display_map(np.asarray(heatmap, dtype=np.float32)), dtype=np.float32)
    if shown.ndim != 2 or not np.isfinite(shown).all():
        raise ValueError(f"a heatmap must be a finite (h, w) or (C, h, w) array, got shape {shown.shape}")
    low, span = float(shown.min()), float(shown.max() - shown.min())
    normed = np.clip((shown - low) / span, 0.0, 1.0) if span > 1e-12 else np.zeros_like(shown)
    values = Image.fromarray(normed, "F").resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    colours = Image.fromarray(colormaps[OVERLAY_CMAP](np.asarray(values), bytes=True)[..., :3], "RGB")
    out = crop.copy()
    region = (left, top, right, bottom)
    out.paste(Image.blend(out.crop(region), colours, OVERLAY_ALPHA), region[:2])
    ImageDraw.Draw(out).rectangle((left, top, right - 1, bottom - 1), outline=OUTLINE_COLOUR, width=1)
    return out


def _save_jpeg(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a JPEG at ``path`` atomically."""
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY))
