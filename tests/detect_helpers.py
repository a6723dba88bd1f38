"""Test helper: a detect.py run interrupted part-way, as a kill would leave it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wildcapture.detection import engine
from wildcapture.detection.run import DetectOptions, detect


def interrupted_detect(source: Path, cae: Path, out: Path, options: DetectOptions, batch: int,
                       monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run detect with a KeyboardInterrupt raised at scored batch `batch` (1-based); returns the progress record it
    left in the staging folder. Scoring is restored afterwards."""
    real, calls = engine._scored_rows, []

    def dies_at_the_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == batch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_scored_rows", dies_at_the_batch)
    with pytest.raises(KeyboardInterrupt):
        detect(source, cae, out, options)
    monkeypatch.setattr(engine, "_scored_rows", real)
    return json.loads((out.parent / f".{out.name}.incomplete" / "progress.rank0.json").read_text())
