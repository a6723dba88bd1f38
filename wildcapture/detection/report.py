"""The rows of a detection run: each process's checkpointed rows file while it scores (`ShardProgress`), then
the outputs written in one pass over the input and those rows: the CSV, the MegaDetector-format JSON and
the rows the review page and the crop export use.

CSV columns (COLUMNS), one row per scored detection (or whole image), per malformed detection, per empty
image and per failure: `image`; `bbox` (MegaDetector's normalised [x, y, w, h], empty for a whole image)
and `detection_conf`; `predicted_class` and `confidence` (its softmax probability); `ood_score` (higher =
more OOD; the score in use, named in the JSON's `classifier_metadata`), `ood_flag` (score > threshold),
`threshold`, `unknown_confidence` (fraction of val_id scores below the score) and `label` (the unknown
label when flagged, else the predicted class); `failure`: empty when scored, else why not (an unreadable
file, a malformed detection naming its field and value, MegaDetector's failure, or "empty: ...").
"""
from __future__ import annotations

import csv
import heapq
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import ijson

if TYPE_CHECKING:
    from wildcapture.detection.engine import DetectionModels

from wildcapture.detection import SCORES
from wildcapture.detection.season import EMPTY, Season, SeasonImage
from wildcapture.errors import ConfigError
from wildcapture.megadetector import DetectionResult, MDWriter
from wildcapture.storage import write_text

COLUMNS = ("image", "bbox", "detection_conf", "predicted_class", "confidence", "ood_score", "ood_flag", "threshold",
           "unknown_confidence", "label", "failure")
_SCORE_TEXT = {"cae": "CAE reconstruction error",
               "fusion": "CAE reconstruction error plus the partner's score, each z-scored on val_id"}


@dataclass
class Summary:
    """Counts of a run's rows: scored items, empty images, failures (unreadable, malformed or MegaDetector's),
    flagged OOD."""

    scored: int = 0
    empty: int = 0
    failed: int = 0
    flagged: int = 0

    def add(self, row: dict[str, Any]) -> None:
        """Count one output row."""
        if not row["failure"]:
            self.scored += 1
            self.flagged += row["ood_flag"] == "True"
        elif row["failure"].startswith(EMPTY):
            self.empty += 1
        else:
            self.failed += 1

    def line(self) -> str:
        return (f"{self.scored} scored, {self.flagged} flagged OOD, {self.empty} empty images, "
                f"{self.failed} failed")


def merged_rows(parts: Sequence[Path]) -> Iterator[dict[str, str]]:
    """Yield the rows of every process's rows file in item order (a streaming k-way merge)."""
    return heapq.merge(*(read_rows(p) for p in parts), key=lambda row: int(row["item"]))


def _plain_row(image: SeasonImage, failure: str, detection: int | None = None) -> dict[str, Any]:
    """The row of an image (or one of its detections) that no process scored; no `item`: not a loader's row."""
    row = failure_row(failure, image=image.image.file, detection="" if detection is None else detection)
    del row["item"]
    return row


def season_rows(season: Season, parts: Sequence[Path]) -> Iterator[tuple[SeasonImage, list[dict[str, Any]]]]:
    """Yield each input image with its rows, in input order: the scored (or unreadable) detections' rows from
    the processes' rows files and a failure row per malformed detection, in detection order; one row for an
    image MegaDetector failed on or without a qualifying detection."""
    scored = merged_rows(parts)
    for image in season.images():
        if not image.image.detections and not image.bad:
            yield image, [_plain_row(image, season.skip_reason(image))]
            continue
        rows = [next(scored) for _ in image.image.detections]
        rows += [_plain_row(image, problem, j) for j, problem in image.bad]
        yield image, sorted(rows, key=lambda row: int(row["detection"]))


def _results(image: SeasonImage, rows: Sequence[dict[str, Any]]) -> tuple[list[DetectionResult], str | None]:
    """The JSON results of one image's scored rows, and the reason it could not be read (None if it could)."""
    results = [DetectionResult(image.index, int(r["detection"]), json.loads(r["classifications"]),
                               float(r["ood_score"]), r["ood_flag"] == "True", float(r["unknown_confidence"]))
               for r in rows if not r["failure"]]
    unread = [r["failure"] for r in rows if r["failure"] and "item" in r]  # a scored item the loader could not read
    return results, (unread[0] if unread and not results else None)


def json_info(models: "DetectionModels", cae: str, score: str, unknown_label: str) -> dict[str, Any]:
    """The classifier's keys of the JSON's ``info``: `cae` is the checkpoint's path as recorded (portable),
    `score` the run's --score (`recorded_score` reads it back)."""
    return {"classifier": "WildCapture ViT + attention-heatmap autoencoder (OOD flag)",
            "classification_completion_time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "classifier_metadata": {"cae_checkpoint": cae, "cae_sha256": models.cae_sha256, "score": score,
                                    "classifier": models.provenance["classifier"]["path"],
                                    "classifier_sha256": models.provenance["classifier"]["sha256"],
                                    "heatmap": models.provenance["heatmap"], "ood_threshold": models.threshold,
                                    "ood_score": f"{models.score_name}: {_SCORE_TEXT[score]}; higher = more OOD",
                                    "unknown_category": f"{unknown_label}: first classification of a detection whose "
                                                        "ood_score is above ood_threshold; its confidence is the "
                                                        "fraction of val_id scores below the detection's"}}


def recorded_score(json_path: Path) -> str | None:
    """The --score recorded in the ``info`` of the JSON output at `json_path` (read as a stream: our writer puts
    ``info`` first), or None when the file is missing, unreadable or not a detect.py output."""
    try:
        with open(json_path, "rb") as handle:
            info = next(ijson.items(handle, "info"), None)
    except (OSError, ijson.JSONError):
        return None
    meta = info.get("classifier_metadata") if isinstance(info, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("ood_score"), str):
        return None
    if meta.get("score") in SCORES:
        return meta["score"]
    return "cae" if meta["ood_score"].startswith("cae:") else "fusion"  # written before "score" was recorded


def write_reports(season: Season, parts: Sequence[Path], csv_tmp: Path, json_tmp: Path, models: "DetectionModels",
                  info: dict[str, Any], unknown_label: str, on_row: Callable[[dict[str, Any]], None]) -> Summary:
    """Write the CSV (COLUMNS) and the MegaDetector JSON (every input image, `MDWriter`) to the temporary
    files `csv_tmp` and `json_tmp`, streamed: memory holds one image's rows. `on_row` sees every scored row
    (with `label`). Returns the summary."""
    summary = Summary()
    with open(csv_tmp, "w", newline="", encoding="utf-8") as csv_handle, \
            open(json_tmp, "w", encoding="utf-8") as json_handle:
        table = csv.writer(csv_handle)
        table.writerow(COLUMNS)
        writer = MDWriter(json_handle, season.header, models.class_names, info, unknown_label)
        for image, rows in season_rows(season, parts):
            for row in rows:
                summary.add(row)
                scored = not row["failure"]
                row["threshold"] = repr(models.threshold) if scored else ""
                row["label"] = "" if not scored else unknown_label if row["ood_flag"] == "True" \
                    else row["predicted_class"]
                table.writerow([row[c] for c in COLUMNS])
                if scored:
                    on_row(row)
            results, unread = _results(image, rows)
            writer.add(image.raw, results, unread, dropped=[j for j, _ in image.bad])
        writer.close()
    return summary


# One process's share of a detection run on disk: rows appended as they are scored, and a checkpoint that
# lets the same command continue where a killed run stopped.
#
# Rows go to `<work>/rows.rank<R>.csv` (PART_COLUMNS, in item order). Every `checkpoint_every` items, at
# a batch boundary, the file is flushed to disk and `<work>/progress.rank<R>.json` is replaced atomically
# with {"fingerprint", "items_done", "bytes"}. A resumed run truncates the rows file to `bytes` (dropping
# rows written after the checkpoint) and starts again at item `items_done`, a batch boundary, so its
# batches, and so its numbers, are those of an uninterrupted run.

# `classifications`: the JSON list of every class's probability, in the classifier's class order
PART_COLUMNS = ("item", "image", "detection", "bbox", "detection_conf", "predicted_class", "confidence",
                "classifications", "ood_score", "ood_flag", "unknown_confidence", "failure")
ROWS_FORMAT = 2  # part of a job's fingerprint: progress written with other columns is not continued


def has_progress(work: Path) -> bool:
    """Whether the work folder `work` holds a checkpoint of any process (a run to continue)."""
    return any(Path(work).glob("progress.rank*.json"))


def failure_row(failure: str, **columns: Any) -> dict[str, Any]:
    """A row of PART_COLUMNS without a score: `failure` says why, `columns` fills the others given ("" elsewhere)."""
    return {**dict.fromkeys(PART_COLUMNS, ""), **columns, "failure": failure}


class ShardProgress:
    """The rows file and checkpoint of rank `rank` in the work folder `work`."""

    def __init__(self, work: Path, rank: int, fingerprint: str, checkpoint_every: int):
        self.rows_path = Path(work) / f"rows.rank{rank}.csv"
        self.progress_path = Path(work) / f"progress.rank{rank}.json"
        self.fingerprint, self.checkpoint_every = fingerprint, checkpoint_every
        self.items_done, self._since_checkpoint = 0, 0
        self._handle: io.TextIOWrapper | None = None

    def saved(self) -> tuple[int, int]:
        """(items done, bytes of the rows file) of this shard's checkpoint of the same job, (0, 0) without one;
        ConfigError if the checkpoint belongs to another job (other inputs, models or settings)."""
        if not self.progress_path.is_file():
            return 0, 0
        saved = json.loads(self.progress_path.read_text(encoding="utf-8"))
        if saved["fingerprint"] != self.fingerprint:
            raise ConfigError(f"{self.progress_path.parent} holds an unfinished run of another job (other input, "
                              "models, score, threshold, batch size or process count): run the same command as it "
                              "did to continue it, or add --overwrite to start afresh")
        return saved["items_done"], saved["bytes"]

    def resume(self) -> int:
        """Open the rows file, continuing a checkpointed run of the same job if there is one; returns the
        number of this shard's items already done (0 when starting afresh). ConfigError if the checkpoint
        belongs to another job (other inputs, models or settings)."""
        start, size = self.saved()
        self._handle = open(self.rows_path, "a+", encoding="utf-8", newline="")
        self._handle.truncate(size)
        self._handle.seek(size)
        if size == 0:
            csv.writer(self._handle).writerow(PART_COLUMNS)
        self.items_done = start
        return start

    def write_batch(self, rows: list[dict[str, Any]], items: int) -> None:
        """Append the rows of one batch of `items` items; checkpoint when `checkpoint_every` items have
        passed since the last checkpoint."""
        writer = csv.writer(self._handle)
        writer.writerows([row[c] for c in PART_COLUMNS] for row in rows)
        self.items_done += items
        self._since_checkpoint += items
        if self._since_checkpoint >= self.checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Make every row written so far durable, then record how far the shard got (atomically)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        write_text(self.progress_path, json.dumps({"fingerprint": self.fingerprint, "items_done": self.items_done,
                                                   "bytes": self._handle.tell()}))
        self._since_checkpoint = 0

    def close(self) -> None:
        """Checkpoint and close the rows file."""
        if self._handle is not None:
            self.checkpoint()
            self._handle.close()
            self._handle = None


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    """Yield the rows of one shard's rows file, in order (the file is streamed, not loaded)."""
    with open(path, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)
