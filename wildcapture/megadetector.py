"""MegaDetector batch-output files (format 1.x): read and check them, crop their boxes, write our results.

The format (https://lila.science/megadetector-output-format): a JSON object with ``info``
(``format_version``, e.g. "1.4"), ``detection_categories`` (``{"1": "animal", "2": "person", ...}``),
optional ``classification_categories`` and ``images``, a list of ``{"file": path, "detections": [...]}``
or ``{"file": path, "failure": reason, "detections": null}``. A detection is ``{"category": "1",
"conf": 0.93, "bbox": [x, y, width, height]}``, the box normalised to [0, 1] with its origin top-left.
MegaDetector keeps nearly every box, so the reader applies a confidence threshold of its own.

Reading: `read_md_json` checks the whole file (one DatasetError naming the file, the entry and the
problem; training's annotations use it) and returns an `MDBatch`: per image its ``file``, MegaDetector's
``failure`` and its *qualifying* detections (animal category, ``conf`` >= threshold). `entry_checker`
checks one entry at a time for a file read as a stream (detect), returning malformed detections instead
of raising. The animal category is the one ``detection_categories`` names "animal", else "1". A file
without ``format_version`` is read as 1.x; another major version is an error.

File paths: MegaDetector runs on Windows too and writes ``file`` with ``\\`` separators there, so a
MegaDetector file's ``\\`` are read as ``/`` (`MDImage.file`). Folder input is not such a file: its
``file``s are the real names on disk (``/``-separated, relative to the folder), in which a ``\\`` is part of
a name (legal on Linux and macOS), so `whole_image_batch` and ``entry_checker(..., windows_paths=False)``
keep them as they are.

Boxes: MegaDetector's rounding can put a coordinate a hair outside [0, 1] (e.g. -0.0001). Coordinates
up to `BBOX_TOLERANCE` outside are clipped to the image; further out (e.g. pixel boxes) is an error,
as is a box with zero width or height. `pixel_box` turns a box into the integer pixel box that
training (`data.annotations`) and detection both crop, so both see the same pixels.

Writing: `MDWriter` (see its docstring) writes our results image by image.

Folder input (no MegaDetector file): `whole_image_batch` makes each image one entry with one detection
covering the whole image: category "1" (animal), ``conf`` 1.0, ``bbox`` [0, 0, 1, 1]. The format keeps
classifications on detections only, so an image-level result needs a detection to sit on; ``conf``
must be a number for Timelapse and MegaDetector's tools to threshold it, and 1.0 keeps every image above
any threshold a reader applies. ``info.detector`` is `WHOLE_IMAGE_DETECTOR`: no detector ran.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Collection, Mapping, NamedTuple, Sequence

from wildcapture.errors import DatasetError

TYPICAL_THRESHOLD = 0.2  # MegaDetector v5's typical_detection_threshold
FORMAT_MAJOR = "1"
DEFAULT_FORMAT_VERSION = "1.4"
DEFAULT_ANIMAL_CATEGORY = "1"
DEFAULT_DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
BBOX_TOLERANCE = 0.01  # how far (in image fractions) a coordinate may lie outside [0, 1] and be clipped
PIXEL_DECIMALS = 6  # pixel coordinates are rounded to this many decimals before floor/ceil
CLASSIFICATION_DECIMALS = 4
WHOLE_IMAGE_DETECTOR = "none (whole images, WildCapture folder input)"
CLASSIFIER_DETECTION_KEYS = ("classifications", "ood_score", "ood_flag")
CLASSIFIER_INFO_KEYS = ("classifier", "classification_completion_time", "classifier_metadata")
CLASSIFIER_TOP_KEYS = ("classification_categories", "classification_category_descriptions")

BBox = tuple[float, float, float, float]  # normalised x, y, width, height
PixelBox = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class MDDetection:
    """A qualifying detection: its position in the image's ``detections`` list, its box (normalised
    [x, y, w, h], clipped to the image) and MegaDetector's confidence."""

    index: int
    bbox: BBox
    conf: float


@dataclass(frozen=True)
class MDImage:
    """One ``images`` entry: ``file`` as in the JSON, a MegaDetector file's Windows ``\\`` separators read
    as ``/`` (a folder's real names kept as they are, see the module docstring), MegaDetector's failure
    reason (None when it processed the image) and the qualifying detections (none for a failure)."""

    file: str
    failure: str | None
    detections: tuple[MDDetection, ...]


@dataclass(frozen=True)
class MDBatch:
    """A checked MegaDetector file: ``images[i]`` describes ``document["images"][i]``."""

    source: Path
    threshold: float
    document: dict[str, Any]
    images: list[MDImage]

    @property
    def info(self) -> dict[str, Any]:
        return self.document.get("info") or {}

    @property
    def detection_categories(self) -> dict[str, str]:
        return self.document.get("detection_categories", DEFAULT_DETECTION_CATEGORIES)

    @property
    def raw_images(self) -> list[dict[str, Any]]:
        return self.document["images"]


class DetectionResult(NamedTuple):
    """Our result for one detection (one row of the detector's CSV).

    ``image`` indexes `MDBatch.images`; ``detection`` is `MDDetection.index` (0 for a whole-image
    batch); ``class_probs`` holds one probability per class, in the classifier's class order;
    ``ood_score`` is the OOD score in use (higher = more OOD) and ``ood_flag`` whether it passed the OOD
    threshold; ``unknown_confidence`` (in [0, 1]) is the confidence of the unknown category, which a flagged
    detection's classifications start with when the writer is given an unknown label.
    """

    image: int
    detection: int
    class_probs: Sequence[float]
    ood_score: float
    ood_flag: bool
    unknown_confidence: float | None = None


def _short(value: Any, limit: int = 80) -> str:
    """repr of ``value``, cut to ``limit`` characters (error messages stay one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def animal_categories(detection_categories: Mapping[str, str]) -> frozenset[str]:
    """Return the detection category ids named "animal" (any case), or {"1"} when none is."""
    named = frozenset(k for k, name in detection_categories.items() if name.strip().lower() == "animal")
    return named or frozenset({DEFAULT_ANIMAL_CATEGORY})


def _clip_span(start: float, length: float) -> tuple[float, float]:
    """Return (start, length) of a normalised span clipped to [0, 1] (unchanged when inside)."""
    end = start + length
    if start >= 0.0 and end <= 1.0:
        return start, length
    start, end = max(start, 0.0), min(end, 1.0)
    return start, end - start


def _check_bbox(bbox: Any) -> BBox | None:
    """Return ``bbox`` as a normalised box clipped to [0, 1], or None when it is not a valid box."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0 or min(x, y) < -BBOX_TOLERANCE or max(x + w, y + h) > 1 + BBOX_TOLERANCE:
        return None
    (x, w), (y, h) = _clip_span(x, w), _clip_span(y, h)
    return (x, y, w, h) if w > 0 and h > 0 else None


class _BadDetection(ValueError):
    """One detection of an image entry is malformed (the message names the field and its value)."""


class _Checker:
    """Checks the parts of one document; its errors name the file. `windows_paths`: the entries' ``file``
    may use Windows' ``\\`` separators (a MegaDetector file), read as ``/``; False: they are real file names
    (folder input), a ``\\`` in them part of a name."""

    def __init__(self, source: Path, windows_paths: bool = True):
        self.source, self.windows_paths = source, windows_paths

    def error(self, where: str, problem: str) -> DatasetError:
        return DatasetError(f"MegaDetector file {self.source}: {where}: {problem}")

    def version(self, info: Any) -> None:
        if info is None:
            return
        if not isinstance(info, dict):
            raise self.error("info", f"must be an object, got {_short(info)}")
        version = info.get("format_version")
        if version is None:
            return
        if not isinstance(version, (str, int, float)) or str(version).split(".")[0].strip() != FORMAT_MAJOR:
            raise self.error("info.format_version", f"{_short(version)} is not a 1.x version this reader knows")

    def categories(self, categories: Any) -> dict[str, str]:
        if not isinstance(categories, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in categories.items()):
            raise self.error("detection_categories", f"must map id strings to names, got {_short(categories)}")
        return categories

    @staticmethod
    def detection(det: Any, where: str) -> tuple[str, float, BBox]:
        """Return (category, conf, clipped bbox) of one detection; _BadDetection naming the field and value."""
        if not isinstance(det, dict) or not isinstance(det.get("category"), str):
            raise _BadDetection(f"{where}: needs a 'category' id string, got {_short(det)}")
        if not _is_number(det.get("conf")):
            raise _BadDetection(f"{where}: 'conf' must be a number, got {_short(det.get('conf'))}")
        bbox = _check_bbox(det.get("bbox"))
        if bbox is None:
            raise _BadDetection(f"{where}: 'bbox' must be 4 numbers [x, y, width, height] normalised to [0, 1] "
                                f"with width, height > 0; got {_short(det.get('bbox'))}")
        return det["category"], float(det["conf"]), bbox

    def image(self, entry: Any, i: int, animal: frozenset[str], threshold: float) -> MDImage:
        """The checked entry ``images[i]``; DatasetError for any malformed part, a detection included."""
        image, bad = self.image_keeping_going(entry, i, animal, threshold)
        if bad:
            raise self.error(f"images[{i}] ({image.file})", bad[0][1])
        return image

    def image_keeping_going(self, entry: Any, i: int, animal: frozenset[str], threshold: float
                            ) -> tuple[MDImage, list[tuple[int, str]]]:
        """The checked entry ``images[i]`` and its malformed detections as (index, problem), left out of
        the image's qualifying detections; DatasetError when the entry itself is malformed."""
        where = f"images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"].strip():
            raise self.error(where, f"needs a 'file' path string, got {_short(entry)}")
        file = entry["file"].replace("\\", "/") if self.windows_paths else entry["file"]
        where = f"{where} ({file})"
        failure = entry.get("failure")
        if failure is not None:
            if not isinstance(failure, str):
                raise self.error(where, f"'failure' must be a string or null, got {_short(failure)}")
            return MDImage(file, failure, ()), []
        detections = entry.get("detections")
        if not isinstance(detections, list):
            raise self.error(where, f"needs a 'detections' list (or a 'failure' string), got {_short(detections)}")
        kept, bad = [], []
        for j, det in enumerate(detections):
            try:
                category, conf, bbox = self.detection(det, f"detections[{j}]")
            except _BadDetection as err:
                bad.append((j, str(err)))
                continue
            if category in animal and conf >= threshold:
                kept.append(MDDetection(j, bbox, conf))
        return MDImage(file, None, tuple(kept)), bad


def entry_checker(header: Any, source: Path, threshold: float, *, windows_paths: bool = True
                  ) -> Callable[[Any, int], tuple[MDImage, list[tuple[int, str]]]]:
    """Check the top level of a file read as a stream (`header`: every top-level key but ``images``) and
    return the check of one entry: ``check(entry, i)`` gives the entry's `MDImage` (animal detections with
    ``conf`` >= ``threshold``) and its malformed detections as (index, problem). DatasetError names the file.
    ``windows_paths``: read ``\\`` in ``file`` as ``/`` (a MegaDetector file); False for the entries of
    `whole_image_batch` (real file names)."""
    check = _Checker(source, windows_paths)
    if not isinstance(header, dict):
        raise check.error("top level", "needs an 'images' list (is this a MegaDetector batch-output file?)")
    check.version(header.get("info"))
    animal = animal_categories(check.categories(header.get("detection_categories", DEFAULT_DETECTION_CATEGORIES)))
    return lambda entry, i: check.image_keeping_going(entry, i, animal, threshold)


def parse_md(document: Any, source: Path, threshold: float = TYPICAL_THRESHOLD, *, windows_paths: bool = True
             ) -> MDBatch:
    """Check a parsed MegaDetector ``document`` (errors name ``source``) and return its `MDBatch`,
    with the animal detections of ``conf`` >= ``threshold`` (a probability in [0, 1]). ``windows_paths``:
    read ``\\`` in ``file`` as ``/`` (False: the files are real names, see the module docstring)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    check = _Checker(source, windows_paths)
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise check.error("top level", "needs an 'images' list (is this a MegaDetector batch-output file?)")
    check.version(document.get("info"))
    animal = animal_categories(check.categories(document.get("detection_categories",
                                                             DEFAULT_DETECTION_CATEGORIES)))
    images = [check.image(entry, i, animal, threshold) for i, entry in enumerate(document["images"])]
    seen: set[str] = set()
    for i, image in enumerate(images):
        if image.file in seen:
            raise check.error(f"images[{i}]", f"file {image.file!r} is listed twice")
        seen.add(image.file)
    return MDBatch(source, threshold, document, images)


def read_md_json(path: Path, threshold: float = TYPICAL_THRESHOLD) -> MDBatch:
    """Read and check the MegaDetector batch-output file at ``path``; return its `MDBatch` with the
    animal detections of ``conf`` >= ``threshold``. Raises DatasetError naming the file and the problem."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(f"MegaDetector file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"MegaDetector file {path} is not a readable JSON file: {exc}") from exc
    return parse_md(document, path, threshold)


def whole_image_batch(folder: Path, files: Sequence[str]) -> MDBatch:
    """Return a batch of the images ``files`` (paths relative to ``folder``, ``/`` separators), each with
    one qualifying detection covering the whole image (see the module docstring). The files are real names:
    a ``\\`` in one is part of the name, kept in ``file`` (not read as a separator)."""
    whole = {"category": DEFAULT_ANIMAL_CATEGORY, "conf": 1.0, "bbox": [0.0, 0.0, 1.0, 1.0]}
    document = {"info": {"format_version": DEFAULT_FORMAT_VERSION, "detector": WHOLE_IMAGE_DETECTOR},
                "detection_categories": dict(DEFAULT_DETECTION_CATEGORIES),
                "images": [{"file": file, "detections": [dict(whole)]} for file in files]}
    return parse_md(document, Path(folder), threshold=0.0, windows_paths=False)


def _pixel_span(start: float, length: float, margin: float, extent: int) -> tuple[int, int]:
    """Pixel interval [lo, hi) of a normalised span widened by ``margin * length`` on each side."""
    pad = margin * length
    lo = math.floor(round((start - pad) * extent, PIXEL_DECIMALS))
    hi = math.ceil(round((start + length + pad) * extent, PIXEL_DECIMALS))
    lo = min(max(lo, 0), extent - 1)
    return lo, max(min(hi, extent), lo + 1)


def pixel_box(bbox: BBox, size: tuple[int, int], margin: float = 0.0) -> PixelBox:
    """Return the integer pixel box (x0, y0, x1, y1), x1/y1 exclusive, of the normalised ``bbox``
    [x, y, w, h] in an image of ``size`` = (width W, height H) pixels as displayed.

    ``margin`` (>= 0) widens the box by that fraction of its width (height) on the left and right
    (top and bottom). Rounding covers every pixel the box touches: x0 = floor(x*W), y0 = floor(y*H),
    x1 = ceil((x+w)*W), y1 = ceil((y+h)*H), each product first rounded to `PIXEL_DECIMALS` decimals so
    float noise (0.1 + 0.2 = 0.30000000000000004) adds no pixel. The box is clipped to the image and
    always keeps at least one pixel.
    """
    if margin < 0:
        raise ValueError(f"crop margin must be >= 0, got {margin}")
    x, y, w, h = bbox
    width, height = size
    x0, x1 = _pixel_span(x, w, margin, width)
    y0, y1 = _pixel_span(y, h, margin, height)
    return x0, y0, x1, y1


def _classifications(class_probs: Sequence[float]) -> list[list[Any]]:
    """[[class id, probability], ...] over every class, highest probability first (ties: lower id first)."""
    order = sorted(range(len(class_probs)), key=lambda c: -class_probs[c])
    return [[str(c), round(float(class_probs[c]), CLASSIFICATION_DECIMALS)] for c in order]


def _without(entry: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in keys}


class MDWriter:
    """Writes our results as a MegaDetector 1.x file, one image entry per line, as the images stream by.

    Every input image is written, in input order. To each scored detection (a `DetectionResult`) it adds
    ``classifications`` ([[class id, probability], ...], every class, highest first; ids index
    ``classification_categories``), ``ood_score`` and ``ood_flag``. With an ``unknown_label``, the
    categories gain that label as id ``str(len(class_names))`` and a flagged detection's classifications
    start with it, at its ``unknown_confidence``, followed by the species. Other detections, failures and
    images without detections are written as read, except that the classification fields of the input
    (``classifications``, ``ood_score``, ``ood_flag``, the categories' descriptions and the classifier's
    ``info`` keys) are dropped: they refer to another classifier. A detection in `dropped` (malformed in
    the input) is left out; an image the detector could not read becomes a failure entry.
    """

    def __init__(self, handle: IO[str], header: Mapping[str, Any], class_names: Sequence[str],
                 extra_info: Mapping[str, Any], unknown_label: str | None = None):
        """Write the top-level keys of the input `header` (every key but ``images``) with ours, and open
        ``images``. ``extra_info`` is merged into ``info``; ``format_version`` stays the input's."""
        self.handle, self.n_classes, self.images = handle, len(class_names), 0
        categories = {str(c): name for c, name in enumerate(class_names)}
        self.unknown_id = None
        if unknown_label is not None:
            self.unknown_id = str(len(class_names))
            categories[self.unknown_id] = unknown_label
        given = header.get("info") or {}
        info = {**_without(given, CLASSIFIER_INFO_KEYS), **extra_info,
                "format_version": given.get("format_version", DEFAULT_FORMAT_VERSION)}
        top = {"info": info, "detection_categories": header.get("detection_categories", DEFAULT_DETECTION_CATEGORIES),
               "classification_categories": categories,
               **_without(header, ("info", "detection_categories", *CLASSIFIER_TOP_KEYS, "images"))}
        handle.write("{\n")
        for key, value in top.items():
            handle.write(f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)},\n")
        handle.write(' "images": [')

    def _fields(self, raw: Mapping[str, Any], results: Sequence[DetectionResult]) -> dict[int, dict[str, Any]]:
        """{detection index: the fields to add}; ValueError for a result that names no detection of the
        entry, has the wrong number of classes, a non-finite score, or repeats a detection."""
        fields: dict[int, dict[str, Any]] = {}
        detections = raw.get("detections") if raw.get("failure") is None else None
        for r in results:
            where = f"result for {raw.get('file')!r}, detection {r.detection}"
            if not isinstance(detections, list) or not 0 <= r.detection < len(detections):
                raise ValueError(f"{where} names no detection of the image")
            if len(r.class_probs) != self.n_classes or not math.isfinite(r.ood_score):
                raise ValueError(f"{where}: needs {self.n_classes} class probabilities and a finite ood_score, "
                                 f"got {len(r.class_probs)} and {r.ood_score}")
            if r.detection in fields:
                raise ValueError(f"{where} given twice")
            classes = _classifications(r.class_probs)
            if self.unknown_id is not None and r.ood_flag:
                if r.unknown_confidence is None or not 0.0 <= r.unknown_confidence <= 1.0:
                    raise ValueError(f"{where}: a flagged detection needs an unknown confidence in [0, 1], "
                                     f"got {r.unknown_confidence}")
                classes = [[self.unknown_id, round(float(r.unknown_confidence), CLASSIFICATION_DECIMALS)], *classes]
            fields[r.detection] = {"classifications": classes, "ood_score": float(r.ood_score),
                                   "ood_flag": bool(r.ood_flag)}
        return fields

    def add(self, raw: Mapping[str, Any], results: Sequence[DetectionResult] = (), failure: str | None = None,
            dropped: Collection[int] = ()) -> None:
        """Write the output entry of the input entry `raw` with its `results`; `failure`: why the detector could
        not read the image (the entry becomes a failure); `dropped`: detection indices to leave out."""
        fields = self._fields(raw, results)
        if raw.get("failure") is not None:
            entry = dict(raw)
        elif failure is not None:
            entry = {**raw, "failure": failure, "detections": None}
        else:
            entry = {**raw, "detections": [{**_without(det, CLASSIFIER_DETECTION_KEYS), **fields.get(j, {})}
                                           for j, det in enumerate(raw["detections"]) if j not in dropped]}
        self.handle.write(("\n  " if self.images == 0 else ",\n  ") + json.dumps(entry, allow_nan=False))
        self.images += 1

    def close(self) -> None:
        """Close ``images`` and the document."""
        self.handle.write("\n ]\n}\n")
