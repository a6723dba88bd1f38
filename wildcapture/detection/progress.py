"""One process's share of a detection run on disk: rows appended as they are scored, and a checkpoint that
lets the same command continue where a killed run stopped.

Rows go to `<work>/rows.rank<R>.csv` (PART_COLUMNS, in item order). Every `checkpoint_every` items, at
a batch boundary, the file is flushed to disk and `<work>/progress.rank<R>.json` is replaced atomically
with {"fingerprint", "items_done", "bytes"}. A resumed run truncates the rows file to `bytes` (dropping
rows written after the checkpoint) and starts again at item `items_done`, a batch boundary, so its
batches, and so its numbers, are those of an uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

from wildcapture.errors import ConfigError
from wildcapture.storage import write_text

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

    def resume(self) -> int:
        """Open the rows file, continuing a checkpointed run of the same job if there is one; returns the
        number of this shard's items already done (0 when starting afresh). ConfigError if the checkpoint
        belongs to another job (other inputs, models or settings)."""
        start, size = 0, 0
        if self.progress_path.is_file():
            saved = json.loads(self.progress_path.read_text(encoding="utf-8"))
            if saved["fingerprint"] != self.fingerprint:
                raise ConfigError(f"{self.progress_path.parent} holds an unfinished run of another job (other input, "
                                  "models, score, threshold, batch size or process count): run the same command as it "
                                  "did to continue it, or add --overwrite to start afresh")
            start, size = saved["items_done"], saved["bytes"]
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
