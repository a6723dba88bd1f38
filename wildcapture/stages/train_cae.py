"""Stage 3: train the convolutional autoencoder on `train_id` heatmaps, select on `val_id`.

Outputs in `output_dir` (default `weights/<exp>/cae/`): `best.pth` (lowest val loss; holds the
model's constructor arguments, the heatmap preparation, the heatmap source's metadata and the OOD
threshold that accepts `train.accept_fraction` of val_id images), `last.pth` (with optimizer state
for `train.resume=true`), `config.yaml` and `log.jsonl` (one JSON line per epoch).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from wildcapture.cae import (NORMS, RESIZE_MODES, ConvAutoencoder, load_heatmaps, ood_threshold, prepare_heatmaps,
                             reconstruction_errors)
from wildcapture.cae.engine import train_one_epoch
from wildcapture.storage import append_log_line, load_resume_state, save_checkpoint
from wildcapture.config import Config, ConfigError, save_config
from wildcapture.data import DatasetError
from wildcapture.paths import heatmaps_dir, resolve_path
from wildcapture.runtime import epoch_seed, pick_device, seed_everything
from wildcapture.stages.evaluate_classifier import META_NAME


def cae_dir(cfg: Config) -> Path:
    """Return the stage-3 output folder: `output_dir`, or `weights/<exp>/cae` when that is null."""
    return resolve_path(cfg["output_dir"] or f"weights/{cfg['exp']}/cae")


def check_cae_settings(cae_cfg: dict[str, Any]) -> None:
    """Raise ConfigError naming the key if `cae.*` holds a value the CAE cannot use."""
    size = cae_cfg["input_size"]
    if not isinstance(size, int) or size < 16 or size % 16:
        raise ConfigError(f"cae.input_size must be a positive multiple of 16, got {size!r}")
    if cae_cfg["resize"] not in RESIZE_MODES:
        raise ConfigError(f"unknown cae.resize '{cae_cfg['resize']}'; choose one of {', '.join(RESIZE_MODES)}")
    if cae_cfg["norm"] not in NORMS:
        raise ConfigError(f"unknown cae.norm '{cae_cfg['norm']}'; choose one of {', '.join(NORMS)}")


def uses_external_heatmaps(cfg: Config) -> bool:
    """True when any split's heatmaps come from `inputs.*` rather than this experiment's stage 2."""
    return any(cfg["inputs"].values())


def heatmap_source(cfg: Config, split: str) -> Path:
    """Return the heatmap file of `split`: `inputs.<split>` if set, else stage 2's `heatmaps.npy`."""
    explicit = cfg["inputs"][split]
    return resolve_path(explicit) if explicit else heatmaps_dir(cfg) / split / "heatmaps.npy"


def heatmaps_meta(cfg: Config) -> dict[str, Any]:
    """Return stage 2's `heatmaps_meta.yaml` (classifier, data and heatmap kind); {} for external
    heatmaps. Raises DatasetError if stage 2's run did not complete (the file is written last)."""
    if uses_external_heatmaps(cfg):
        return {}
    path = heatmaps_dir(cfg) / META_NAME
    if not path.is_file():
        raise DatasetError(f"stage 2's output in {path.parent} is incomplete ({META_NAME}, written at the end of "
                           "a complete run, is missing): rerun Test_Classifier/test_classifier.py")
    return yaml.safe_load(path.read_text())


def load_heatmaps_of(cfg: Config, split: str) -> np.ndarray:
    """Return the split's raw heatmaps (N, h, w) float32, with errors that name the file and split."""
    source = heatmap_source(cfg, split)
    if not source.is_file():
        raise FileNotFoundError(f"heatmaps of split {split} not found: {source}; run stage 2 "
                                f"(Test_Classifier/test_classifier.py) for exp={cfg['exp']} or set inputs.{split}")
    try:
        heatmaps = load_heatmaps(source)
    except ValueError as err:
        raise DatasetError(f"cannot use the heatmaps of split {split}: {err}") from err
    if len(heatmaps) == 0:
        raise DatasetError(f"split {split} is empty: no heatmaps in {source}")
    return heatmaps


def load_prepared(cfg: Config, split: str) -> torch.Tensor:
    """Return the split's heatmaps resized and normalised for the CAE: (N, 1, S, S) float32."""
    cae_cfg = cfg["cae"]
    return prepare_heatmaps(load_heatmaps_of(cfg, split), cae_cfg["input_size"], cae_cfg["resize"], cae_cfg["norm"])


def run(cfg: Config) -> dict[str, Any]:
    """Train the CAE described by `cfg`; returns the last epoch's log record plus `best_val_loss`."""
    seed_everything(cfg["seed"])
    device = pick_device(cfg["device"])
    train_cfg, cae_cfg, out = cfg["train"], cfg["cae"], cae_dir(cfg)
    check_cae_settings(cae_cfg)
    x_train, x_val = load_prepared(cfg, "train_id").to(device), load_prepared(cfg, "val_id").to(device)
    model = ConvAutoencoder(cae_cfg["input_size"], cae_cfg["zdim"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    start_epoch, best_loss, stale = 0, float("inf"), 0
    state = load_resume_state(out, train_cfg["resume"])
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_loss, stale = state["epoch"] + 1, state["best_val_loss"], state["stale_epochs"]
    if start_epoch == 0:
        (out / "log.jsonl").unlink(missing_ok=True)
    save_config(cfg, out / "config.yaml")
    meta = {"model_args": model.constructor_args(), "prep": {"resize": cae_cfg["resize"], "norm": cae_cfg["norm"]},
            "heatmaps": heatmaps_meta(cfg), "format": "wildcapture-cae-1"}
    print(f"stage 3: CAE {cae_cfg['input_size']}x{cae_cfg['input_size']} on {len(x_train)} train_id / "
          f"{len(x_val)} val_id heatmaps, device {device}; writing to {out}", flush=True)

    record: dict[str, Any] = {"best_val_loss": best_loss}
    patience = train_cfg["early_stopping"]
    for epoch in range(start_epoch, train_cfg["epochs"]):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(epoch_seed(cfg["seed"], epoch))
        train_loss = train_one_epoch(model, x_train, optimizer, train_cfg["batch_size"], generator, device,
                                     epoch=epoch)
        val_errors = reconstruction_errors(model, x_val, train_cfg["eval_batch_size"], device)
        val_loss = float(val_errors.mean())
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            threshold = ood_threshold(val_errors, train_cfg["accept_fraction"])
            save_checkpoint({**meta, "model": model.state_dict(), "epoch": epoch, "val_loss": val_loss,
                             "threshold": threshold, "accept_fraction": train_cfg["accept_fraction"]},
                            out / "best.pth")
        else:
            stale += 1
        record.update(best_val_loss=best_loss, seconds=round(time.perf_counter() - started, 3))
        save_checkpoint({**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "best_val_loss": best_loss, "stale_epochs": stale}, out / "last.pth")
        append_log_line(out / "log.jsonl", record)
        if patience and stale >= patience:
            print(f"early stopping: val loss has not improved for {patience} epochs", flush=True)
            break
    return record

