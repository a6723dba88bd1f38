"""The review page of a run: every flagged detection, most unusual first, and a seeded sample of the
others for contrast. Their images are written as the batches are scored (`ReviewPage.write_assets`, kept
by a resumed run), their cards collected as the output rows stream by (`add`) and the page written last."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from wildcapture.detection.review_assets import write_review_assets
from wildcapture.detection.review_page import Card, write_review_page
from wildcapture.detection.review_sample import UnflaggedSample
from wildcapture.detection.season import Item
from wildcapture.errors import DatasetError

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
