"""The outputs of a detection run: the processes' rows merged in item order into the CSV, and the summary.

CSV columns (COLUMNS): `image`; `bbox` (MegaDetector's normalised [x, y, w, h], empty for a whole
image) and `detection_conf`; `predicted_class` and `confidence` (its softmax probability);
`ood_score` (CAE reconstruction error, higher = more OOD), `ood_flag` (score > threshold) and
`threshold`; `failure`: empty when the item was scored, else why not (an unreadable file,
MegaDetector's failure, or "empty: ..." for an image without an animal box), the score columns
then empty.
"""
from __future__ import annotations

import csv
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from wildcapture.detection.items import EMPTY
from wildcapture.detection.progress import read_rows
from wildcapture.storage import atomic_write

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
