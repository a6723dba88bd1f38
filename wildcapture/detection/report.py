"""The outputs of a detection run: the processes' rows merged in item order into the CSV, and the summary.

CSV columns (COLUMNS): `image`; `bbox` (MegaDetector's normalised [x, y, w, h], empty for a whole
image) and `detection_conf`; `predicted_class` and `confidence` (its softmax probability);
`ood_score` (higher = more OOD: the CAE reconstruction error, or with `--score fusion` the fusion
detector's score, e.g. cae+mahalanobis), `ood_flag` (score > threshold) and `threshold` (the one stage 3
stored for that score, unless --threshold); `failure`: empty when the item was scored, else why not (an unreadable file,
MegaDetector's failure, or "empty: ..." for an image without an animal box), the score columns
then empty.
"""
from __future__ import annotations

import csv
import heapq
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from wildcapture.detection.engine import Detector

from wildcapture.detection.items import EMPTY, Item
from wildcapture.detection.progress import read_rows
from wildcapture.megadetector import DetectionResult, MDBatch, write_md_json
from wildcapture.storage import atomic_write

_SCORE_TEXT = {False: "CAE reconstruction error",
               True: "CAE reconstruction error plus the partner's score, each z-scored on val_id"}
COLUMNS = ("image", "bbox", "detection_conf", "predicted_class", "confidence", "ood_score", "ood_flag", "threshold",
           "failure")


@dataclass
class Summary:
    """Counts of a run's rows: scored items, empty images, failures (unreadable or MegaDetector's), flagged OOD."""

    scored: int = 0
    empty: int = 0
    failed: int = 0
    flagged: int = 0

    def add(self, row: dict[str, str]) -> None:
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


def write_csv_report(parts: Sequence[Path], out_csv: Path, threshold: float) -> Summary:
    """Write the merged rows to `out_csv` (COLUMNS, atomically, streamed); returns the summary."""
    summary = Summary()

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for row in merged_rows(parts):
                summary.add(row)
                row = {**row, "threshold": "" if row["failure"] else repr(threshold)}
                writer.writerow([row[c] for c in COLUMNS])

    atomic_write(out_csv, write)
    return summary


def write_json_report(batch: MDBatch, items: Sequence[Item], parts: Sequence[Path], out_json: Path,
                      detector: "Detector", cae: str) -> None:
    """Write the MegaDetector-format JSON of the run (every input image; see `megadetector.write_md_json`):
    scored detections get classifications, ood_score and ood_flag; unreadable images become failures.
    The merged rows are streamed into it: memory holds one image's rows (and the failed images' reasons)."""
    failures: dict[int, str] = {}

    def results() -> Iterator[DetectionResult]:
        for row in merged_rows(parts):
            item = items[int(row["item"])]
            if not row["failure"]:
                yield DetectionResult(item.image_index, item.detection, json.loads(row["classifications"]),
                                      float(row["ood_score"]), row["ood_flag"] == "True")
            elif not item.skip:  # our failure to read the file (MegaDetector's own and empty images pass through)
                failures[item.image_index] = row["failure"]

    info = {"classifier": "WildCapture ViT + attention-heatmap autoencoder (OOD flag)",
            "classification_completion_time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "classifier_metadata": {"cae_checkpoint": cae, "classifier": detector.provenance["classifier"]["path"],
                                    "classifier_sha256": detector.provenance["classifier"]["sha256"],
                                    "heatmap": detector.provenance["heatmap"], "ood_threshold": detector.threshold,
                                    "ood_score": f"{detector.score_name}: {_SCORE_TEXT[bool(detector.fusion)]}; "
                                                 "higher = more OOD"}}
    write_md_json(out_json, batch, results(), detector.class_names, info, failures)
