"""What a detection run reads: a folder of images, or a MegaDetector file read as a stream.

A MegaDetector file is parsed incrementally (`ijson`): the top-level keys but ``images`` first, then one
image entry at a time, so a file of millions of images is never held. Each entry is checked on its own:
a malformed detection becomes a failure row and the rest of the file is scored. A file that is not a
MegaDetector file at all is refused with one error. A folder becomes whole-image entries (see
`megadetector.whole_image_batch`) named by their real relative paths: a backslash in a name stays one,
while a MegaDetector file's Windows backslashes are read as ``/``. Only the qualifying detections
(`Item`s) stay in memory; the output pass reads the entries again (`Season.images`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import ijson

from wildcapture.data.images import list_images
from wildcapture.errors import ConfigError, DatasetError
from wildcapture.megadetector import MDBatch, MDImage, entry_checker, whole_image_batch

EMPTY = "empty"
ROOT_PROBE = 50  # when none of the first ROOT_PROBE images exists, --image-root is wrong


@dataclass(frozen=True)
class Item:
    """One qualifying detection, scored by the run: image `image_index` (its `file` is `image`, read from
    `path`), detection `detection` of that image's list, its normalised `bbox` [x, y, w, h] (None: the
    whole image) and MegaDetector's `conf` (None for a folder's whole image)."""

    image_index: int
    image: str
    path: str
    detection: int
    bbox: tuple[float, float, float, float] | None = None
    conf: float | None = None


@dataclass(frozen=True)
class SeasonImage:
    """One input image: its index, the entry as read (`raw`), the checked entry and its malformed
    detections as (detection index, problem)."""

    index: int
    raw: dict[str, Any]
    image: MDImage
    bad: tuple[tuple[int, str], ...]


class Season:
    """The input of a run: a folder (`whole_images`) or a MegaDetector file, with its top-level keys
    (`header`) and its images streamed in order (`images`)."""

    def __init__(self, source: Path, threshold: float, image_root: Path | None = None):
        """DatasetError for a missing folder or file, a folder without images or a file that is not a
        MegaDetector file; the entries are checked as `images` streams them."""
        self.source, self.threshold = Path(source), threshold
        self.whole_images = self.source.suffix.lower() != ".json"
        if self.whole_images:
            self._folder = _folder_batch(self.source)
            self.header = self._folder.document
            self.image_root = self.source
        else:
            self.header = _read_header(self.source)
            self.image_root = image_root or self.source.parent
        # a MegaDetector file's `file` may use Windows' separators; a folder's are real names, where a
        # backslash is part of the name (`megadetector` module docstring)
        self._check = entry_checker(self.header, self.source, threshold, windows_paths=not self.whole_images)

    def _entries(self) -> Iterator[Any]:
        if self.whole_images:
            yield from self._folder.raw_images
            return
        with _open_json(self.source) as handle:
            try:
                yield from ijson.items(handle, "images.item", use_float=True)
            except ijson.JSONError as err:
                raise DatasetError(f"MegaDetector file {self.source} is not a readable JSON file: {err}") from err

    def images(self) -> Iterator[SeasonImage]:
        """Each image entry in file order, checked; DatasetError for an entry that is malformed itself."""
        for i, raw in enumerate(self._entries()):
            image, bad = self._check(raw, i)
            yield SeasonImage(i, raw, image, tuple(bad))

    def path_of(self, file: str) -> str:
        """Where the image `file` (as the entry names it) is read from."""
        return os.path.join(self.image_root, file)

    def skip_reason(self, image: SeasonImage) -> str:
        """Why an image without qualifying detections gets no score: MegaDetector's failure, or empty."""
        if image.image.failure is not None:
            return f"megadetector: {image.image.failure}"
        return f"{EMPTY}: no animal detection with conf >= {self.threshold:g}"


@dataclass
class Scan:
    """What the first pass over a season found: the items to score, counts and the input's digest."""

    items: list[Item]
    images: int
    malformed: int
    digest: str


def scan(season: Season) -> Scan:
    """Read the whole season once: list its qualifying detections, count its images and malformed
    detections, digest every entry (a changed input cannot resume another's progress), and check that
    files are unique and that the image root holds the first images. ConfigError naming --image-root
    when none of the first `ROOT_PROBE` images exists; DatasetError for a file listed twice."""
    items: list[Item] = []
    seen: set[bytes] = set()  # 8-byte digests of the file names: flat memory for millions of images
    digest, probed, found, malformed, count = hashlib.sha256(), 0, 0, 0, 0
    for image in season.images():
        count += 1
        file = image.image.file
        key = hashlib.blake2b(file.encode(), digest_size=8).digest()
        if key in seen:
            raise DatasetError(f"MegaDetector file {season.source}: images[{image.index}]: file {file!r} is "
                               "listed twice")
        seen.add(key)
        digest.update(f"{file}\0{image.image.failure}\0{image.image.detections}\0{image.bad}\n".encode())
        malformed += len(image.bad)
        if image.image.failure is None and probed < ROOT_PROBE and not season.whole_images:
            probed, found = probed + 1, found + os.path.exists(season.path_of(file))
            _check_root(season, probed, found)
        items.extend(Item(image.index, file, season.path_of(file), det.index,
                          None if season.whole_images else det.bbox, None if season.whole_images else det.conf)
                     for det in image.image.detections)
    _check_root(season, probed, found, final=True)
    return Scan(items, count, malformed, digest.hexdigest())


def _check_root(season: Season, probed: int, found: int, final: bool = False) -> None:
    if found == 0 and probed and (probed == ROOT_PROBE or final):
        raise ConfigError(f"none of the first {probed} images of {season.source} exists under the image root "
                          f"{season.image_root} (e.g. {season.image_root / _first_file(season)}): give the folder "
                          "MegaDetector's file paths are relative to with --image-root")


def _first_file(season: Season) -> str:
    return next(im.image.file for im in season.images() if im.image.failure is None)


def _folder_batch(folder: Path) -> MDBatch:
    """The images under `folder` (recursively, sorted) as a whole-image batch; DatasetError naming the
    folder when it is missing or holds no image."""
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"no .jpg/.jpeg/.png images in {folder}")
    return whole_image_batch(folder, [p.relative_to(folder).as_posix() for p in paths])


def _read_header(path: Path) -> dict[str, Any]:
    """Every top-level key of the JSON file at `path` but ``images``, read as a stream; DatasetError when the
    file is missing, not JSON, or not an object with an ``images`` list."""
    header: dict[str, Any] = {}
    images = False
    try:
        with _open_json(path) as handle:
            events = ijson.parse(handle, use_float=True)
            if next(events, (None, None))[1] != "start_map":
                raise _not_md(path)
            key, builder = None, None
            for prefix, event, value in events:
                if prefix == "" and event in ("map_key", "end_map"):
                    if builder is not None:
                        header[key] = builder.value
                    key = value
                    builder = None if value in ("images", None) else ijson.ObjectBuilder()
                elif key == "images":
                    images = images or (prefix == "images" and event == "start_array")
                elif builder is not None:
                    builder.event(event, value)
    except FileNotFoundError:
        raise DatasetError(f"MegaDetector file not found: {path}") from None
    except (OSError, ijson.JSONError, UnicodeDecodeError) as err:
        raise DatasetError(f"MegaDetector file {path} is not a readable JSON file: {err}") from err
    if not images:
        raise _not_md(path)
    return header


def _open_json(path: Path) -> BinaryIO:
    """`path` opened for ijson, past a UTF-8 byte-order mark if it starts with one (as Windows tools write)."""
    handle = open(path, "rb")
    if handle.read(3) != b"\xef\xbb\xbf":
        handle.seek(0)
    return handle


def _not_md(path: Path) -> DatasetError:
    return DatasetError(f"MegaDetector file {path}: top level: needs an 'images' list (is this a MegaDetector "
                        "batch-output file?)")
