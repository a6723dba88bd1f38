"""Stage 3: train the convolutional autoencoder on `train_id` heatmaps, select on `val_id`.

Outputs in `output_dir` (default `weights/<exp>/cae/`): `best.pth` (lowest val loss; holds the
model's constructor arguments, the heatmap preparation, the provenance of the heatmaps it learned,
the OOD threshold that accepts `train.accept_fraction` of val_id images and, unless fusion.partner is
null or the heatmaps are `inputs.*` files, the fusion detector `fusion` with its own threshold; formats
in `wildcapture.cae.checkpoint` and `wildcapture.ood.fusion`), `last.pth` (with optimizer state for
`train.resume=true`), `config.yaml`, `log.jsonl` (one JSON line per epoch) and, last, `train_cae.complete.yaml`.
While it trains they live in `.train_cae.incomplete/`, so a failed run leaves the previous one untouched; it
keeps that folder, for `train.resume=true`, only if an epoch completed (see `wildcapture.training_run`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wildcapture.cae.architectures import arch_of, cae_from_config, check_fits, heatmap_prep, model_args
from wildcapture.cae.checkpoint import CAE_FORMAT, sorted_scores
from wildcapture.cae.engine import ood_threshold, reconstruction_errors, train_one_epoch
from wildcapture.cae.fusion_inputs import FusionCalibration
from wildcapture.cae.heatmap_data import HeatmapPrep, RawHeatmaps, channel_shape, training_source
from wildcapture.cae.inputs import FIT_INPUTS, heatmap_source
from wildcapture.data.protocol import FIT_SPLITS
from wildcapture.cae.settings import check_config
from wildcapture.config import Config
from wildcapture.errors import ConfigError
from wildcapture.paths import cae_dir
from wildcapture.runtime import epoch_seed, grad_scaler, pick_device, seed_everything
from wildcapture.storage import write_yaml
from wildcapture.training_checkpoint import TrainingState
from wildcapture.training_run import TrainingRun, epoch_summary, run_outputs

STAGE = "train_cae"
# Keys a resumed run may change: they do not change the model, its data or its optimisation
# (the heatmaps themselves are compared by provenance).
FREE_ON_RESUME = {"exp", "output_dir", "results_dir", "heatmaps_dir", "inputs", "device", "test", "train.resume",
                  "train.epochs", "train.eval_batch_size", "train.early_stopping"}


def outputs(cfg: Config) -> list[Path]:
    """The files a run writes in its output folder, the completion marker last."""
    return run_outputs(cae_dir(cfg), STAGE)


def check(cfg: Config) -> list[Path]:
    """Every check of `run` that needs no training, writing nothing: the config, the heatmaps (marker, digests;
    the features and logits the fusion partner is fit on), the CAE against their shape, and a resume's
    compatibility. Returns `outputs(cfg)`."""
    check_config(cfg)
    source = heatmap_source(cfg, FIT_INPUTS)
    provenance = source.provenance()
    train_maps, val_maps = (source.heatmaps(split) for split in FIT_SPLITS)
    _cae_for(cfg["cae"], train_maps.shape, val_maps.shape)
    if cfg["fusion"]["partner"] is not None and source.from_stage2:
        for split in FIT_SPLITS:
            source.features_and_logits(split)
    _check_same_heatmaps(TrainingRun(cae_dir(cfg), STAGE).start(cfg, FREE_ON_RESUME, prepare=False), provenance)
    return outputs(cfg)


def _cae_for(cae_cfg: dict[str, Any], train_shape: tuple[int, ...], val_shape: tuple[int, ...]
             ) -> tuple[nn.Module, HeatmapPrep]:
    """The CAE `cae.*` describes for train_id's heatmaps (N, [C,] h, w) and its heatmap preparation; DatasetError
    unless val_id's heatmaps fit it too."""
    model = cae_from_config(cae_cfg, channel_shape(train_shape))
    prep = heatmap_prep(model, cae_cfg["resize"], cae_cfg["norm"])
    check_fits(model, prep, val_shape, "split val_id (the CAE is shaped by train_id's heatmaps)")
    return model, prep


def run(cfg: Config) -> dict[str, Any]:
    """Train the CAE described by `cfg`; returns the last epoch's log record plus `best_val_loss`.

    The config, the heatmaps (completion marker, digests) and a resume's compatibility are checked
    before any file is written. A run that fails keeps its staging folder only if an epoch completed
    (see `wildcapture.training_run`).
    """
    check_config(cfg)
    device = pick_device(cfg["device"])
    training = TrainingRun(cae_dir(cfg), STAGE)
    with training.hold(f"stage 3 {STAGE}, exp {cfg['exp']}"):
        return _train(cfg, device, training)


@dataclass
class _Loop:
    """What every epoch of a run uses."""

    cfg: Config
    training: TrainingRun
    state: TrainingState
    train_maps: RawHeatmaps
    val_maps: RawHeatmaps
    prep: HeatmapPrep
    device: torch.device
    amp: bool
    fusion: FusionCalibration | None
    meta: dict[str, Any]  # the checkpoints' own entries (format, model_args, prep, heatmaps)


def _train(cfg: Config, device: torch.device, training: TrainingRun) -> dict[str, Any]:
    """Train from scratch or from the run resumed, then commit; returns the last epoch's log record plus
    `best_val_loss`."""
    seed_everything(cfg["seed"])
    train_cfg, cae_cfg = cfg["train"], cfg["cae"]
    source = heatmap_source(cfg, FIT_INPUTS)
    provenance = source.provenance()
    # raw (N, [C,] h, w) heatmaps memory-mapped (or on a GPU that holds them), prepared a chunk at a time
    train_maps, val_maps = (training_source(source.heatmaps(split), device) for split in FIT_SPLITS)
    fusion = FusionCalibration.fit(cfg["fusion"]["partner"], source, cfg["fusion"]["weight"])
    model, prep = _cae_for(cae_cfg, train_maps.shape, val_maps.shape)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    amp = train_cfg["amp"] and device.type == "cuda"
    state = TrainingState(model, optimizer, scaler=grad_scaler(device, amp))
    resumed = training.start(cfg, FREE_ON_RESUME)
    _check_same_heatmaps(resumed, provenance)
    start_epoch, saved = state.restore(resumed)
    write_yaml(training.path("config.yaml"), cfg)
    ckpt_meta = {"format": CAE_FORMAT, "model_args": model_args(model),
                 "prep": {"resize": prep.resize, "norm": prep.norm}, "heatmaps": provenance}
    print(f"stage 3: {arch_of(model)} CAE, input {'x'.join(map(str, model.input_shape))}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, on {len(train_maps)} train_id / "
          f"{len(val_maps)} val_id heatmaps, device {device}; writing to {training.out}", flush=True)
    loop = _Loop(cfg, training, state, train_maps, val_maps, prep, device, amp, fusion, ckpt_meta)
    record = _fit(loop, start_epoch, saved.get("best_val_loss", float("inf")), saved.get("stale_epochs", 0))
    best_loss = record["best_val_loss"]
    training.commit({"exp": cfg["exp"], "best_val_loss": best_loss, "heatmaps_run_id": provenance.get("run_id")})
    print(f"stage 3 done: best val loss {best_loss:.6g}; wrote {training.out}", flush=True)
    return record


def _fit(loop: _Loop, start_epoch: int, best_loss: float, stale: int) -> dict[str, Any]:
    """Train epochs start_epoch .. train.epochs - 1 (counted from 0), or until the val loss has not improved
    for train.early_stopping epochs (`stale` so far), saving and logging each; returns the last epoch's
    log record."""
    train_cfg = loop.cfg["train"]
    record: dict[str, Any] = {"best_val_loss": best_loss}
    patience = train_cfg["early_stopping"]
    epochs = tqdm(range(start_epoch, train_cfg["epochs"]), desc="stage 3 epochs", initial=start_epoch,
                  total=train_cfg["epochs"])
    for epoch in epochs:
        started = time.perf_counter()
        train_loss, val_errors = _train_epoch(loop, epoch)
        val_loss = float(val_errors.mean())
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            _save_best(loop, epoch, val_errors)
        else:
            stale += 1
        record.update(best_val_loss=best_loss, seconds=round(time.perf_counter() - started, 3))
        summary = epoch_summary(epoch, train_cfg["epochs"], {"train_loss": train_loss, "val_loss": val_loss,
                                                             "best": best_loss}, record["seconds"])
        loop.training.log(record, summary)  # before last.pth: a resume drops the log lines of epochs after last.pth
        extras = {**loop.meta, "best_val_loss": best_loss, "stale_epochs": stale}
        loop.training.save("last.pth", loop.state.checkpoint(epoch, loop.cfg, extras, resumable=True))
        if patience and stale >= patience:
            print(f"early stopping: val loss has not improved for {patience} epochs", flush=True)
            break
    return record


def _train_epoch(loop: _Loop, epoch: int) -> tuple[float, np.ndarray]:
    """Train one epoch (data order seeded by (seed, epoch) only); returns (its train loss, the val_id
    reconstruction errors (N,) after it)."""
    train_cfg, model = loop.cfg["train"], loop.state.model
    generator = torch.Generator().manual_seed(epoch_seed(loop.cfg["seed"], epoch))
    train_loss = train_one_epoch(model, loop.train_maps, loop.prep, loop.state.optimizer, train_cfg["batch_size"],
                                 generator, loop.device, epoch=epoch, amp=loop.amp, scaler=loop.state.scaler)
    return train_loss, reconstruction_errors(model, loop.val_maps, loop.prep, train_cfg["eval_batch_size"], loop.device)


def _save_best(loop: _Loop, epoch: int, val_errors: np.ndarray) -> None:
    """Save best.pth: the model of `epoch`, with the OOD threshold, the sorted val scores and (unless there is
    no fusion partner) the fusion detector fit on `val_errors`."""
    accept = loop.cfg["train"]["accept_fraction"]
    extras = {**loop.meta, "val_loss": float(val_errors.mean()), "threshold": ood_threshold(val_errors, accept),
              "accept_fraction": accept, "val_scores": sorted_scores(val_errors),
              **({"fusion": loop.fusion.entry(val_errors, accept)} if loop.fusion else {})}
    loop.training.save("best.pth", loop.state.checkpoint(epoch, loop.cfg, extras))


def _check_same_heatmaps(resumed: dict[str, Any] | None, provenance: dict[str, Any]) -> None:
    """Refuse to resume (`resumed`: the checkpoint resumed, or None) on other heatmaps than it learned from."""
    if resumed is None:
        return
    before = resumed.get("heatmaps", {})
    key = "external" if "external" in provenance else "heatmap_files"
    if before.get(key) != provenance.get(key):
        raise ConfigError("train.resume=true, but the heatmaps differ from those the run being resumed learned "
                          f"from ({key}: {provenance.get(key)} vs {before.get(key)}): start afresh with "
                          "train.resume=false")
