"""Check, before any training, that every image of every split can be loaded; report all bad ones at once.

Only file sources (`images.FileImages`) are decoded; array data sets (digits, CIFAR) have nothing to
check. Each file is decoded once, however many crop items use it. A JPEG is decoded at 1/8 scale in
the DCT domain (`PIL.Image.draft`): several times faster than a full decode, and it still reads all the
entropy-coded data, so a truncated or corrupt file fails as it would in `images.load_rgb`. Files are
spread over worker processes; a progress bar counts them.
"""
from __future__ import annotations

import os
import warnings
from functools import partial
from multiprocessing import Pool
from typing import NamedTuple

from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from wildcapture.errors import DatasetError
from wildcapture.runtime import available_cpus

from .images import FileImages, clip_box, displayed_size, parse_source
from .splits import DataSplits

MIN_FILES_PER_WORKER = 8  # fewer files than this per process: decode them in this process (no pool start-up)
MAX_CHUNKSIZE = 16  # files per task sent to a worker: cheap messaging, yet a smooth progress bar
MAX_LISTED = 50  # bad items named in the error message


class BadImage(NamedTuple):
    """An item that cannot be loaded: its split, its source string and why."""

    split: str
    source: str
    reason: str


def probe_image(path: str) -> tuple[int, int] | str:
    """Decode the image file at ``path`` (a JPEG at 1/8 scale, every byte of it still read).

    Return its (width, height) as displayed, i.e. after the EXIF orientation `images.load_rgb` applies,
    or a short reason why it cannot be decoded.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. corrupt-EXIF warnings on camera-trap JPEGs, as load_rgb
            with Image.open(path) as image:
                size = displayed_size(image)  # before the draft below shrinks image.size
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                ImageOps.exif_transpose(image)  # as load_rgb does: a damaged EXIF block can fail here
                return size
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image file PIL can identify"
    except Exception as exc:  # whatever the decoder raises, report the file rather than crash the check
        return str(exc) or type(exc).__name__


def _probe_all(paths: list[str], workers: int, progress: bool) -> dict[str, tuple[int, int] | str]:
    """Return `probe_image` of each path, keyed by path; in ``workers`` processes when there are enough files."""
    bar = partial(tqdm, total=len(paths), desc="verify images", unit="file", disable=not progress, leave=False)
    workers = min(workers, len(paths) // MIN_FILES_PER_WORKER)
    if workers <= 1:
        return dict(zip(paths, bar(map(probe_image, paths))))
    chunksize = max(1, min(MAX_CHUNKSIZE, len(paths) // (4 * workers)))
    with Pool(workers) as pool:
        return dict(zip(paths, bar(pool.imap(probe_image, paths, chunksize))))


def find_unreadable(data: DataSplits, workers: int | None = None, progress: bool = True) -> list[BadImage]:
    """Decode every file image of every split of ``data`` once and return the items that cannot be loaded.

    An item is bad when its file is missing, empty, not an image, truncated or corrupt, or when its crop
    box lies wholly outside the image. Items come in split then item order. Splits whose loader is not
    `FileImages` (in-memory arrays) are skipped without decoding anything. ``workers``: decoding processes
    (default: every CPU this process may use; 1 or few files: this process only).
    """
    items = [(name, source, *parse_source(source)) for name, split in data.splits.items()
             if isinstance(split.loader, FileImages) for source in split.sources]
    paths = list(dict.fromkeys(path for _, _, path, _ in items))
    probed = _probe_all(paths, available_cpus() if workers is None else workers, progress) if paths else {}
    bad: list[BadImage] = []
    for name, source, path, box in items:
        size_or_reason = probed[path]
        if isinstance(size_or_reason, str):
            bad.append(BadImage(name, source, size_or_reason))
        elif box is not None and clip_box(box, size_or_reason) is None:
            width, height = size_or_reason
            bad.append(BadImage(name, source, f"crop box {box} lies outside the {width}x{height} image"))
    return bad


def verify_split_images(data: DataSplits, workers: int | None = None, progress: bool = True) -> None:
    """Return None when every item of ``data`` can be loaded (see `find_unreadable`).

    Otherwise raise DatasetError whose first line says how many items failed and what to do, followed
    by one line per bad item (the first `MAX_LISTED`).
    """
    bad = find_unreadable(data, workers, progress)
    if not bad:
        return
    total = sum(len(split) for split in data.splits.values())
    lines = [f"{len(bad)} of {total} items (images or crops) of data set {data.name!r} cannot be loaded; "
             "replace or delete these files (or fix their crop boxes), or set data.verify_images=false to skip "
             "this check:"]
    lines += [f"  {b.split}: {b.source}: {b.reason}" for b in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    raise DatasetError("\n".join(lines))
