"""`detect.py`'s job: score a folder or a MegaDetector batch output with a trained detector, resumably.

Work files live in `<out folder>/.<out name>.incomplete/` (one rows file and checkpoint per process,
see `progress`, and the run lock); when every process is done, the first merges them into the CSV
(`report.COLUMNS`) and the MegaDetector-format JSON beside it, then removes them (the lock stays).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from wildcapture.detection import SCORES
from wildcapture.detection.engine import job_fingerprint, load_detector, prepare_work_folder, score_shard
from wildcapture.detection.items import batch_items, load_batch
from wildcapture.detection.report import Summary, write_csv_report, write_json_report
from wildcapture.errors import ConfigError
from wildcapture.provenance import heatmap_precision
from wildcapture.run_lock import LOCK_NAME, hold_lock
from wildcapture.runtime import cleanup_distributed, describe_precision, init_distributed
from wildcapture.storage import write_text


@dataclass
class DetectOptions:
    """The settings of a detection run (the command line of detect.py)."""

    batch_size: int = 64
    device: str = "auto"
    threshold: float | None = None   # None: the threshold stage 3 stored
    workers: int = 0
    md_threshold: float = 0.2         # MegaDetector confidence an animal box needs to be scored
    crop_margin: float = 0.0          # fraction of the box's size added on each side of a crop
    image_root: Path | None = None    # MegaDetector's `file` paths are relative to it (default: the JSON's folder)
    checkpoint_every: int = 1000      # items between two checkpoints of each process
    overwrite: bool = False           # discard an unfinished run's progress instead of continuing it
    score: str = "cae"                # ood_score: "cae" (reconstruction error) or "fusion" (the checkpoint's fusion)
    precision: str = "auto"           # the classifier's: auto | fp32 | bf16 (runtime.resolve_precision)

    def check(self) -> None:
        """Raise ConfigError naming the option whose value cannot be used."""
        problems = [(self.batch_size < 1, "--batch-size must be >= 1"), (self.workers < 0, "--workers must be >= 0"),
                    (not 0 <= self.md_threshold <= 1, "--md-threshold must be in [0, 1]"),
                    (self.crop_margin < 0, "--crop-margin must be >= 0"),
                    (self.checkpoint_every < 1, "--checkpoint-every must be >= 1"),
                    (self.score not in SCORES, f"--score must be one of {', '.join(SCORES)}, got {self.score!r}")]
        for bad, message in problems:
            if bad:
                raise ConfigError(message)


def check_outputs(source: Path, out_csv: Path) -> None:
    """Refuse outputs that would replace the input; create `out_csv`'s folder and write a probe file there,
    so a read-only or full disk stops the run before any work (the OSError names the path)."""
    if out_csv.suffix.lower() == ".json":
        raise ConfigError(f"--out {out_csv} names the CSV, and its JSON twin would replace it: give a .csv path")
    for out in (out_csv, out_csv.with_suffix(".json")):
        if out.resolve() == source.resolve():
            raise ConfigError(f"--out {out_csv} would write {out} over the input {source}: choose another --out")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    probe = out_csv.parent / f".{out_csv.name}.{os.getpid()}.probe"  # one per process under torchrun
    write_text(probe, "ok")
    probe.unlink()


def precision_line(setting: str, detector, device) -> str:
    """The run's first line: the precision chosen, and the one the CAE's heatmaps were made in."""
    learned = heatmap_precision(detector.provenance) or "unrecorded"
    return (f"detect: classifier on {device}, {describe_precision(setting, detector.precision, device)}; the CAE "
            f"learned heatmaps of precision {learned} (the CAE runs in fp32)")


def detect(source: Path, cae_path: Path, out_csv: Path, options: DetectOptions) -> Summary | None:
    """Score every item of `source` and write `out_csv` and its JSON twin; returns the summary (None on the
    non-main processes of a torchrun job).

    Running the same command again continues an interrupted run (`options.overwrite` starts afresh).
    """
    options.check()
    check_outputs(source, out_csv)
    state, device = init_distributed(options.device)
    work = out_csv.parent / f".{out_csv.name}.incomplete"
    try:
        detector = load_detector(cae_path, options.batch_size, device, options.threshold, options.score,
                                 options.precision)
        if state.is_main:
            print(precision_line(options.precision, detector, device), flush=True)
        batch = load_batch(source, options.md_threshold)
        is_json = source.suffix.lower() == ".json"
        items = batch_items(batch, (options.image_root or source.parent) if is_json else source, not is_json)
        with hold_lock(work, f"detect.py -> {out_csv}") if state.is_main else contextlib.nullcontext():
            prepare_work_folder(work, options.overwrite, state)
            settings: dict[str, Any] = {"batch_size": options.batch_size, "crop_margin": options.crop_margin,
                                        "world_size": state.world_size, "source": str(source)}
            score_shard(detector, items, work, state, batch_size=options.batch_size, workers=options.workers,
                        margin=options.crop_margin, checkpoint_every=options.checkpoint_every, device=device,
                        fingerprint=job_fingerprint(items, detector, settings))
            if state.enabled:
                dist.barrier()
            if not state.is_main:
                return None
            parts = [work / f"rows.rank{rank}.csv" for rank in range(state.world_size)]
            summary = write_csv_report(parts, out_csv, detector.threshold)
            write_json_report(batch, items, parts, out_csv.with_suffix(".json"), detector, str(cae_path))
            for path in work.iterdir():  # the job is done; the lock file stays, so a run started meanwhile
                if path.name != LOCK_NAME:  # keeps the lock it waits for
                    path.unlink()
        return summary
    finally:
        cleanup_distributed()
