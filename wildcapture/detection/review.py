"""The review page of a run: every flagged detection, most unusual first, and a seeded sample of the
others for contrast. Their images are written as the batches are scored (`ReviewPage.write_assets`, kept
by a resumed run; `write_review_assets`), their cards collected as the output rows stream by (`add`) and the
page written last (`review_page`)."""
from __future__ import annotations

import hashlib
import heapq
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Sequence, TypeVar

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from wildcapture.detection.review_page import Card, asset_file_name, write_review_page
from wildcapture.data.images import Box, PixelBox, decode_reduced, decode_scale
from wildcapture.data.transforms import centre_crop_box
from wildcapture.detection.season import Item
from wildcapture.errors import DatasetError
from wildcapture.attention import display_map
from wildcapture.megadetector import pixel_box
from wildcapture.storage import atomic_write

if TYPE_CHECKING:
    from wildcapture.detection.engine import DetectionModels
    from wildcapture.detection.report import Summary

SAMPLE_SIZE = 24  # unflagged detections shown for contrast
SAMPLE_SEED = 0


def _card(row: dict[str, Any]) -> Card:
    return Card(item=int(row["item"]), image=row["image"], bbox=tuple(json.loads(row["bbox"])) if row["bbox"] else None,
                predicted_class=row["predicted_class"], confidence=float(row["confidence"]),
                ood_score=float(row["ood_score"]), unknown_confidence=float(row["unknown_confidence"]),
                flagged=row["ood_flag"] in (True, "True"))


class ReviewPage:
    """The images, cards and page of one run over `items`; the images go to `folder` while it runs."""

    def __init__(self, folder: Path, items: Sequence[Item], models: "DetectionModels", margin: float):
        self.folder, self.items, self.margin = folder, items, margin
        self.input_size = tuple(models.provenance["input_spec"]["input_size"])
        self.sample: UnflaggedSample[Card] = UnflaggedSample(SAMPLE_SIZE, SAMPLE_SEED, len(items))
        self.flagged: list[Card] = []
        folder.mkdir(parents=True, exist_ok=True)

    def shows(self, row: dict[str, Any]) -> bool:
        """Whether the page may show this scored row: flagged, or a candidate of the sample."""
        return row["ood_flag"] in (True, "True") or self.sample.wants(int(row["item"]))

    def write_assets(self, rows: Sequence[dict[str, Any]], heatmaps: np.ndarray) -> None:
        """Write the images of one batch's scored rows the page may show; `heatmaps[j]` (h, w) is row j's map."""
        for row, heatmap in zip(rows, heatmaps):
            if self.shows(row):
                item = self.items[int(row["item"])]
                try:
                    write_review_assets(self.folder, int(row["item"]), item.path, item.bbox, self.margin, heatmap,
                                        self.input_size)
                except DatasetError:  # the file changed since it was scored: its card shows no image
                    continue

    def add(self, row: dict[str, Any]) -> None:
        """Keep the card of a scored output row the page shows."""
        if row["ood_flag"] == "True":
            self.flagged.append(_card(row))
        elif self.shows(row):
            self.sample.offer(int(row["item"]), _card(row))

    def write(self, out_html: Path, summary: "Summary", models: "DetectionModels", score: str) -> int:
        """Write the page to `out_html` (its images must be in place beside it); returns the flagged cards."""
        self.flagged.sort(key=lambda card: (-card.ood_score, card.item))
        info = {"detections scored": str(summary.scored), "flagged": str(summary.flagged),
                "score": f"{models.score_name} (--score {score}), higher = more unusual",
                "threshold": f"{models.threshold:.6g}", "classes": ", ".join(models.class_names)}
        return write_review_page(out_html, self.flagged, self.sample.values(), info)


T = TypeVar("T")
KEY_RANGE = 1 << 64
OVERSAMPLE = 4.0


def sample_key(seed: int, item: int) -> int:
    """Return item ``item``'s sampling key under ``seed``: an integer in [0, 2**64), uniform, reproducible."""
    digest = hashlib.blake2b(f"{seed}:{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class UnflaggedSample(Generic[T]):
    """Keeps, of the candidates offered (`wants`), the ``size`` with the smallest `sample_key`, each once.

    An unflagged item is a candidate when its key falls in the lowest ``oversample * size / n_items`` fraction
    of the key range, so the run writes thumbnails for candidates only. Nothing depends on the order the items
    arrive in: a resumed run, or torchrun's shards merged, draw the sample of one uninterrupted run.
    """

    def __init__(self, size: int, seed: int, n_items: int, oversample: float = OVERSAMPLE):
        if size < 0 or n_items < 0 or oversample < 1:
            raise ValueError(f"need size >= 0, n_items >= 0, oversample >= 1; got {size}, {n_items}, {oversample}")
        self.size, self.seed = size, seed
        self.cutoff = round(KEY_RANGE * min(1.0, oversample * size / max(n_items, 1)))
        self._heap: list[tuple[int, int, T]] = []  # (-key, item, value): the largest kept key on top
        self._items: set[int] = set()

    def wants(self, item: int) -> bool:
        """Return True when unflagged item ``item`` is a candidate (write its thumbnails, then `offer` it)."""
        return sample_key(self.seed, item) < self.cutoff

    def offer(self, item: int, value: T) -> None:
        """Consider unflagged item ``item`` (carrying ``value``, e.g. its review card); non-candidates and
        items already offered are ignored."""
        key = sample_key(self.seed, item)
        if item in self._items or key >= self.cutoff:
            return
        entry = (-key, item, value)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif self._heap and entry[0] > self._heap[0][0]:
            self._items.discard(heapq.heapreplace(self._heap, entry)[1])
        else:
            return
        self._items.add(item)

    def values(self) -> list[T]:
        """Return the sampled values, in item order."""
        return [value for _, _, value in sorted(self._heap, key=lambda e: e[1])]


# The review page's three JPEGs per detection, written while the images stream (see `review_page`).
#
# For item ``i`` the folder beside ``X.html`` (`review_folder`, ``X_review/``) holds:
#
# * ``{i:06d}-crop.jpg``: the crop the classifier saw before its eval transform (the detection box widened by
#   the crop margin, as `megadetector.pixel_box` does; the whole image for a folder input), at most
#   `CROP_MAX` px on its long side;
# * ``{i:06d}-attention.jpg``: that crop with the attention map the CAE scored laid over the centre crop the
#   model saw (`transforms.centre_crop_box`), colour-mapped and outlined;
# * ``{i:06d}-full.jpg``: the whole image, at most `FULL_MAX` px on its long side, with the detection box
#   (MegaDetector's, without the margin) drawn in red.
#
# Each file is written atomically, so a resumed run can keep every file it finds (`has_review_assets`).

CROP_MAX = 200  # px, long side of the crop and attention thumbnails
FULL_MAX = 800  # px, long side of the full image
JPEG_QUALITY = 85
OVERLAY_ALPHA = 0.5
OVERLAY_CMAP = "jet"  # as heatmaps/gallery.py's overlay
BOX_COLOUR, BOX_WIDTH = (255, 0, 0), 3
OUTLINE_COLOUR = (255, 255, 255)


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
    decoded, full_size, crop_box = decode_reduced(image_path, bbox, margin, _reduction)
    crop_size = (crop_box[2] - crop_box[0], crop_box[3] - crop_box[1])
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
