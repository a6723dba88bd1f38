"""`detect.py`'s job: score a folder or a MegaDetector batch output with a trained classifier + CAE, resumably.

Work files live in `<out folder>/.<out name>.incomplete/` (one rows file and checkpoint per process,
see `report.ShardProgress`, the review images in `review/`, and the run lock); when every process is done, the first
writes the CSV, the MegaDetector-format JSON and the review page beside it, then removes the work folder.
A run that fails before any checkpoint removes it too, and the folders it created.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from wildcapture.detection import DECODES, SCORES
from wildcapture.detection.engine import DetectionModels, job_fingerprint, load_models, prepare_work_folder, score_shard
from wildcapture.detection.report import ShardProgress, Summary, has_progress, json_info, recorded_score, write_reports
from wildcapture.detection.review import ReviewPage
from wildcapture.detection.review_page import review_folder
from wildcapture.detection.season import Scan, Season, scan
from wildcapture.errors import ConfigError
from wildcapture.paths import portable_path
from wildcapture.run_lock import hold_lock, missing_folders, remove_empty, remove_held
from wildcapture.runtime import (DistState, available_cpus, cleanup_distributed, describe_precision, heatmap_precision,
                                 init_distributed, pick_device)
from wildcapture.storage import TMP_SUFFIX, write_text

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """DataLoader decode processes when --workers is not given: the available CPUs but one (for the model),
    at most MAX_DEFAULT_WORKERS; on a 2-CPU machine one process decodes while the main one runs the model."""
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() - 1))


@dataclass(kw_only=True)
class DetectOptions:
    """The settings of a detection run (the command line of detect.py), given by keyword."""

    batch_size: int = 64
    device: str = "auto"
    threshold: float | None = None   # None: the threshold stage 3 stored
    workers: int | None = None        # None: default_workers()
    md_threshold: float = 0.2         # MegaDetector confidence an animal box needs to be scored
    crop_margin: float = 0.0          # fraction of the box's size added on each side of a crop
    image_root: Path | None = None    # MegaDetector's `file` paths are relative to it (default: the JSON's folder)
    checkpoint_every: int = 1000      # items between two checkpoints of each process
    overwrite: bool = False           # discard an unfinished run's progress instead of continuing it, and
                                      # replace finished outputs of the other score
    score: str = "cae"                # ood_score: "cae" (reconstruction error) or "fusion" (the checkpoint's fusion)
    unknown_label: str = "unknown"    # the classification category of a flagged detection
    html: bool = True                 # write the review page X.html and its images
    export_crops: Path | None = None  # write the flagged crops (all with export_all) under this folder
    export_all: bool = False
    precision: str = "auto"           # the classifier's: auto | fp32 | bf16 (runtime.resolve_precision)
    decode: str = "cpu"               # "gpu": JPEGs decoded on the CUDA device (gpu_decode); "cpu": in the workers

    def check(self) -> None:
        """Raise ConfigError naming the option whose value cannot be used: the one check of every setting
        (detect.py's parser leaves them to it), so the command line and `detect` refuse alike."""
        problems = [(self.batch_size < 1, "--batch-size must be >= 1"),
                    (self.workers is not None and self.workers < 0, "--workers must be >= 0"),
                    (not 0 <= self.md_threshold <= 1, "--md-threshold must be in [0, 1]"),
                    (self.crop_margin < 0, "--crop-margin must be >= 0"),
                    (self.checkpoint_every < 1, "--checkpoint-every must be >= 1"),
                    (self.score not in SCORES, f"--score must be one of {', '.join(SCORES)}, got {self.score!r}"),
                    (not self.unknown_label.strip() or "/" in self.unknown_label,
                     f"--unknown-label must be a non-empty name without '/', got {self.unknown_label!r}"),
                    (self.export_all and self.export_crops is None, "--export-all needs --export-crops DIR"),
                    (self.decode not in DECODES, f"--decode must be one of {', '.join(DECODES)}, got {self.decode!r}")]
        for bad, message in problems:
            if bad:
                raise ConfigError(message)


@dataclass(frozen=True)
class OutputPaths:
    """Where a run writes: the CSV, its JSON twin, the review page and the folder of its images."""

    csv: Path

    @property
    def json(self) -> Path:
        return self.csv.with_suffix(".json")

    @property
    def html(self) -> Path:
        return self.csv.with_suffix(".html")

    @property
    def review(self) -> Path:
        return review_folder(self.html)

    @property
    def work(self) -> Path:
        return self.csv.parent / f".{self.csv.name}.incomplete"

    def staged(self, path: Path) -> Path:
        """Where the output `path` is written while the run is unfinished (in the work folder)."""
        return self.work / path.name


def _missing(folders: Sequence[Path | None]) -> list[Path]:
    """The folders of `folders` (None: none) and their parents that do not exist yet, deepest first."""
    missing = {p for folder in folders if folder is not None for p in missing_folders(folder)}
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def _probe(folder: Path) -> None:
    """Create `folder` and write a probe file there, so a read-only or full disk stops the run before any
    work (the OSError names the path)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".probe.{os.getpid()}{TMP_SUFFIX}"  # one per process under torchrun
    write_text(probe, "ok")
    probe.unlink()


def check_outputs(source: Path, out: OutputPaths, options: DetectOptions) -> None:
    """Refuse outputs that would replace the input, or (without `overwrite`) the finished outputs of the other
    score (nothing is written)."""
    if out.csv.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out.csv} names the CSV, beside which the .json and .html go: give a .csv path")
    for path in (out.csv, out.json, out.html):
        if path.resolve() == source.resolve():
            raise ConfigError(f"--out {out.csv} would write {path} over the input {source}: choose another --out")
    if options.export_crops is not None and options.export_crops.resolve() in source.resolve().parents:
        raise ConfigError(f"--export-crops {options.export_crops} holds the input {source}: choose another folder")
    previous = recorded_score(out.json) if out.csv.is_file() and not options.overwrite else None
    if previous not in (None, options.score):
        raise ConfigError(f"--out {out.csv} holds the finished outputs of --score {previous}, which --score "
                          f"{options.score} would replace: add --overwrite to replace them, or give another --out")


def precision_line(setting: str, models: DetectionModels, device) -> str:
    """The run's first line: the precision chosen, and the one the CAE's heatmaps were made in."""
    learned = heatmap_precision(models.provenance) or "unrecorded"
    return (f"detect: classifier on {device}, {describe_precision(setting, models.precision, device)}; the CAE "
            f"learned heatmaps of precision {learned} (the CAE runs in fp32)")


def _replace_folder(source: Path, target: Path) -> None:
    """Move the folder `source` to `target`, replacing a previous one (renamed aside first, then removed)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    if old.exists():
        shutil.rmtree(old)


def _finish(season: Season, found: Scan, models: DetectionModels, out: OutputPaths, state: DistState, cae_path: Path,
            options: DetectOptions, page: ReviewPage | None) -> Summary:
    """Merge the processes' rows into the outputs: all written in the work folder first (a full disk leaves the
    previous outputs as they were), then moved into place, the CSV last; export the crops when asked. Returns
    the summary."""
    parts = [out.work / f"rows.rank{rank}.csv" for rank in range(state.world_size)]
    tmp_csv, tmp_json = (out.work / f"{path.name}{TMP_SUFFIX}" for path in (out.csv, out.json))
    info = json_info(models, portable_path(Path(cae_path).resolve()), options.score, options.unknown_label)
    summary = write_reports(season, parts, tmp_csv, tmp_json, models, info, options.unknown_label,
                            page.add if page else lambda row: None)
    if page is not None:
        page.write(out.staged(out.html), summary, models, options.score)
        _replace_folder(out.staged(out.review), out.review)
        os.replace(out.staged(out.html), out.html)
    os.replace(tmp_json, out.json)
    os.replace(tmp_csv, out.csv)
    if options.export_crops is not None:
        from wildcapture.detection.crop_export import export_crops

        export_crops(parts, found.items, options.export_crops, options.unknown_label, options.crop_margin,
                     options.export_all)
    return summary


def _load_models(cae_path: Path, options: DetectOptions, device: torch.device) -> DetectionModels:
    """The models of the run, checked against the options; ConfigError or CheckpointError when unusable."""
    if options.decode == "gpu" and device.type != "cuda":
        raise ConfigError(f"--decode gpu needs a CUDA device; this run's device is {device}: use --decode cpu")
    models = load_models(cae_path, options.batch_size, device, options.threshold, options.score, options.precision)
    if options.decode == "gpu":
        from wildcapture.detection.gpu_decode import check_interpolation

        check_interpolation(models.provenance["input_spec"]["interpolation"])
    if options.unknown_label in models.class_names:
        raise ConfigError(f"--unknown-label {options.unknown_label!r} is one of the classifier's classes: "
                          "choose another label")
    return models


def _job_settings(season: Season, options: DetectOptions, world_size: int) -> dict[str, Any]:
    """The settings that, with the input and the models, decide a run's rows (`engine.job_fingerprint`)."""
    return {"batch_size": options.batch_size, "crop_margin": options.crop_margin, "world_size": world_size,
            "source": str(season.source), "html": options.html, "image_root": str(season.image_root),
            **({"decode": options.decode} if options.decode != "cpu" else {})}


def _score_and_finish(season: Season, found: Scan, models: DetectionModels, out: OutputPaths, state: DistState,
                      device: torch.device, cae_path: Path, options: DetectOptions) -> Summary | None:
    """Score this process's shard in the work folder, then (first process) write the outputs; returns the
    summary (None on the other processes)."""
    prepare_work_folder(out.work, options.overwrite, state)
    page = ReviewPage(out.staged(out.review), found.items, models, options.crop_margin) if options.html else None
    settings = _job_settings(season, options, state.world_size)
    workers = default_workers() if options.workers is None else options.workers
    score_shard(models, found.items, out.work, state, batch_size=options.batch_size, workers=workers,
                margin=options.crop_margin, checkpoint_every=options.checkpoint_every, device=device,
                fingerprint=job_fingerprint(found, models, settings), review=page, decode=options.decode)
    if state.enabled:
        dist.barrier()
    if not state.is_main:
        return None
    return _finish(season, found, models, out, state, cae_path, options, page)


def _run_locked(season: Season, found: Scan, models: DetectionModels, out: OutputPaths, state: DistState,
                device: torch.device, cae_path: Path, options: DetectOptions) -> Summary | None:
    """`_score_and_finish` under the run lock of the work folder (held by the first process), which then
    removes the work folder: when the run is done, or when it fails with no progress to continue."""
    with hold_lock(out.work, f"detect.py -> {out.csv}") if state.is_main else contextlib.nullcontext():
        try:
            summary = _score_and_finish(season, found, models, out, state, device, cae_path, options)
        except BaseException:
            if state.is_main and not has_progress(out.work):
                remove_held(out.work)
            raise
        if state.is_main:
            remove_held(out.work)
        return summary


def _inputs(source: Path, out_csv: Path, options: DetectOptions) -> tuple[OutputPaths, Season, Scan]:
    """The checks before the models: the options, the outputs against the input, the input read through;
    returns the output paths, the season and its scan."""
    options.check()
    out = OutputPaths(out_csv)
    check_outputs(source, out, options)
    season = Season(source, options.md_threshold, options.image_root)
    return out, season, scan(season)


def check(source: Path, cae_path: Path, out_csv: Path, options: DetectOptions) -> list[Path]:
    """Every check of `detect` that needs no scoring, writing nothing: the options, the outputs (not over the
    input; another score's finished outputs only with `overwrite`), the input (a folder, or a MegaDetector file
    read through, its images found under the image root) and the models (the CAE checkpoint, its classifier by
    SHA-256, the score's threshold and calibration). Returns the files and folders a run would write."""
    out, season, found = _inputs(source, out_csv, options)
    device = pick_device(options.device)
    models = _load_models(cae_path, options, device)
    fingerprint = job_fingerprint(found, models, _job_settings(season, options, world_size=1))
    done = 0 if options.overwrite else ShardProgress(out.work, 0, fingerprint, 1).saved()[0]
    print(f"{precision_line(options.precision, models, device)}\ndetect: {len(found.items)} items to score by "
          f"{models.score_name}, threshold {models.threshold:.6g}"
          + (f"; continues the unfinished run after its first {done}" if done else ""), flush=True)
    return [out.csv, out.json, *([out.html, out.review] if options.html else []),
            *([options.export_crops] if options.export_crops is not None else [])]


def detect(source: Path, cae_path: Path, out_csv: Path, options: DetectOptions) -> Summary | None:
    """Score every item of `source` and write `out_csv`, its JSON twin and (unless `options.html` is off) the
    review page; returns the summary (None on the non-main processes of a torchrun job).

    Running the same command again continues an interrupted run (`options.overwrite` starts afresh). The
    options, input and models are checked before anything is written; a run that fails with no progress to
    continue leaves nothing new on disk, and a finished run leaves only its outputs.
    """
    out, season, found = _inputs(source, out_csv, options)
    state, device = init_distributed(options.device)
    try:
        models = _load_models(cae_path, options, device)
        if state.is_main:
            print(precision_line(options.precision, models, device), flush=True)
        made = _missing([out.csv.parent, options.export_crops])
        try:
            for folder in (out.csv.parent, options.export_crops):
                if folder is not None:
                    _probe(folder)
            return _run_locked(season, found, models, out, state, device, cae_path, options)
        except BaseException:
            remove_empty(made)
            raise
    finally:
        cleanup_distributed()
