"""Stage 3: train the convolutional autoencoder on `train_id` heatmaps, select on `val_id`.

Outputs in `output_dir` (default `weights/<exp>/cae/`): `best.pth` (lowest val loss; holds the
model's constructor arguments, the heatmap preparation, the provenance of the heatmaps it learned,
the OOD threshold that accepts `train.accept_fraction` of val_id images and, unless fusion.partner is
null or the heatmaps are `inputs.*` files, the fusion detector `fusion` with its own threshold; formats
in `wildcapture.cae.checkpoint` and `wildcapture.ood.fusion`), `last.pth` (with optimizer state for
`train.resume=true`), `config.yaml`, `log.jsonl` (one JSON line per epoch) and, last, `train_cae.complete.yaml`.
While it trains they live in `.train_cae.incomplete/`, so a failed run leaves the previous one untouched.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from tqdm import tqdm

from wildcapture.cae import ood_threshold, reconstruction_errors
from wildcapture.cae.architectures import arch_of, cae_from_config, check_fits, heatmap_prep, model_args
from wildcapture.cae.checkpoint import CAE_FORMAT, sorted_scores
from wildcapture.cae.engine import train_one_epoch
from wildcapture.cae.fusion_inputs import FusionCalibration
from wildcapture.cae.inputs import heatmap_source
from wildcapture.cae.settings import check_config
from wildcapture.config import Config
from wildcapture.errors import ConfigError
from wildcapture.cae.heatmap_data import channel_shape, training_source
from wildcapture.paths import cae_dir
from wildcapture.run_lock import hold_lock
from wildcapture.runtime import epoch_seed, grad_scaler, pick_device, seed_everything
from wildcapture.storage import write_yaml
from wildcapture.training_run import TrainingRun, epoch_summary

STAGE = "train_cae"
TRAIN_SPLITS = ("train_id", "val_id")
# Keys a resumed run may change: they do not change the model, its data or its optimisation
# (the heatmaps themselves are compared by provenance).
FREE_ON_RESUME = {"exp", "output_dir", "results_dir", "heatmaps_dir", "inputs", "device", "test", "train.resume",
                  "train.epochs", "train.eval_batch_size", "train.early_stopping"}


def run(cfg: Config) -> dict[str, Any]:
    """Train the CAE described by `cfg`; returns the last epoch's log record plus `best_val_loss`.

    The config, the heatmaps (completion marker, digests) and a resume's compatibility are checked
    before any file is written.
    """
    check_config(cfg)
    device = pick_device(cfg["device"])
    out = cae_dir(cfg)
    with hold_lock(out, f"stage 3 {STAGE}, exp {cfg['exp']}"):
        return _train(cfg, device, out)


def _train(cfg: Config, device: torch.device, out) -> dict[str, Any]:
    seed_everything(cfg["seed"])
    train_cfg, cae_cfg = cfg["train"], cfg["cae"]
    source = heatmap_source(cfg, TRAIN_SPLITS)
    provenance = source.provenance()
    # raw (N, [C,] h, w) heatmaps memory-mapped (or on a GPU that holds them), prepared a chunk at a time
    train_maps, val_maps = (training_source(source.heatmaps(split), device) for split in TRAIN_SPLITS)
    fusion = FusionCalibration.fit(cfg["fusion"]["partner"], source)
    model = cae_from_config(cae_cfg, channel_shape(train_maps.shape)).to(device)
    prep = heatmap_prep(model, cae_cfg["resize"], cae_cfg["norm"])
    check_fits(model, prep, val_maps.shape, "split val_id (the CAE is shaped by train_id's heatmaps)")
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    amp = train_cfg["amp"] and device.type == "cuda"
    scaler = grad_scaler(device, amp)
    training = TrainingRun(out, STAGE)
    state = training.start(cfg, FREE_ON_RESUME)
    start_epoch, best_loss, stale = 0, float("inf"), 0
    if state:
        _check_same_heatmaps(state, provenance)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_loss, stale = state["epoch"] + 1, state["best_val_loss"], state["stale_epochs"]
    write_yaml(training.path("config.yaml"), cfg)
    ckpt_meta = {"format": CAE_FORMAT, "model_args": model_args(model),
                 "prep": {"resize": prep.resize, "norm": prep.norm}, "heatmaps": provenance, "config": cfg}
    print(f"stage 3: {arch_of(model)} CAE, input {'x'.join(map(str, model.input_shape))}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, on {len(train_maps)} train_id / "
          f"{len(val_maps)} val_id heatmaps, device {device}; writing to {out}", flush=True)

    record: dict[str, Any] = {"best_val_loss": best_loss}
    patience = train_cfg["early_stopping"]
    epochs = tqdm(range(start_epoch, train_cfg["epochs"]), desc="stage 3 epochs", initial=start_epoch,
                  total=train_cfg["epochs"])
    for epoch in epochs:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(epoch_seed(cfg["seed"], epoch))
        train_loss = train_one_epoch(model, train_maps, prep, optimizer, train_cfg["batch_size"], generator, device,
                                     epoch=epoch, amp=amp, scaler=scaler)
        val_errors = reconstruction_errors(model, val_maps, prep, train_cfg["eval_batch_size"], device)
        val_loss = float(val_errors.mean())
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            threshold = ood_threshold(val_errors, train_cfg["accept_fraction"])
            training.save("best.pth", {**ckpt_meta, "model": model.state_dict(), "epoch": epoch, "val_loss": val_loss,
                                       "threshold": threshold, "accept_fraction": train_cfg["accept_fraction"],
                                       "val_scores": sorted_scores(val_errors),
                                       **({"fusion": fusion.entry(val_errors, train_cfg["accept_fraction"])}
                                          if fusion else {})})
        else:
            stale += 1
        record.update(best_val_loss=best_loss, seconds=round(time.perf_counter() - started, 3))
        summary = epoch_summary(epoch, train_cfg["epochs"], {"train_loss": train_loss, "val_loss": val_loss,
                                                             "best": best_loss}, record["seconds"])
        training.log(record, summary)  # before last.pth: a resume drops the log lines of epochs after last.pth
        training.save("last.pth", {**ckpt_meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "epoch": epoch, "best_val_loss": best_loss, "stale_epochs": stale})
        if patience and stale >= patience:
            print(f"early stopping: val loss has not improved for {patience} epochs", flush=True)
            break
    training.commit({"exp": cfg["exp"], "best_val_loss": best_loss, "heatmaps_run_id": provenance.get("run_id")})
    print(f"stage 3 done: best val loss {best_loss:.6g}; wrote {out}", flush=True)
    return record


def _check_same_heatmaps(state: dict[str, Any], provenance: dict[str, Any]) -> None:
    """Refuse to resume on other heatmaps than the run being resumed learned from."""
    before = state.get("heatmaps", {})
    key = "external" if "external" in provenance else "heatmap_files"
    if before.get(key) != provenance.get(key):
        raise ConfigError("train.resume=true, but the heatmaps differ from those the run being resumed learned "
                          f"from ({key}: {provenance.get(key)} vs {before.get(key)}): start afresh with "
                          "train.resume=false")
