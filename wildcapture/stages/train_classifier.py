"""Stage 1: train the ViT classifier on the ID classes and keep the best and last checkpoints.

Outputs in `output_dir` (default `weights/<exp>/vit/`): `best.pth` (best val accuracy),
`last.pth` (end of the latest epoch, with optimizer state for `train.resume=true`),
`config.yaml` (the resolved config), `log.jsonl` (one JSON line per epoch), `manifest.csv`
(every item of every split) and, written last, `train_classifier.complete.yaml`. While the run
trains they live in `.train_classifier.incomplete/` (see `wildcapture.training_run`), so a failed
run leaves the previous one untouched.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from wildcapture.classifier.data_setup import attach_transforms, input_spec, make_loader
from wildcapture.classifier.engine import evaluate, train_one_epoch
from wildcapture.classifier.sampler import EpochSampler
from wildcapture.config import Config
from wildcapture.config_checks import check_choice, check_number, check_positive_ints
from wildcapture.data import DatasetError, build_benchmark, resolve_data_cfg
from wildcapture.data.verify import verify_benchmark_images
from wildcapture.paths import classifier_dir, resolve_path
from wildcapture.run_lock import hold_lock
from wildcapture.runtime import (cleanup_distributed, epoch_seed, grad_scaler, init_distributed, pick_device,
                                 seed_everything)
from wildcapture.storage import write_yaml
from wildcapture.training_run import TrainingRun, epoch_summary
from wildcapture.vit import build_vit, load_weights, model_args_from_config

STAGE = "train_classifier"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "none")
# Keys a resumed run may change: they do not change the model or its optimisation.
FREE_ON_RESUME = {"exp", "output_dir", "device", "num_workers", "train.resume", "train.eval_batch_size",
                  "data.verify_images", "data.download"}


def check_config(cfg: Config) -> None:
    """Raise ConfigError (or DatasetError for `data.*`) naming the first value stage 1 cannot use."""
    train = "train."
    check_positive_ints(cfg, *(train + k for k in ("epochs", "batch_size", "eval_batch_size", "step_size")))
    check_number(cfg, "train.lr", above=0)
    check_number(cfg, "train.weight_decay", minimum=0)
    check_number(cfg, "train.momentum", minimum=0, maximum=1)
    check_number(cfg, "train.gamma", above=0)
    check_number(cfg, "train.grad_clip", above=0, optional=True)
    check_choice(cfg, "train.optimizer", OPTIMIZERS)
    check_choice(cfg, "train.scheduler", SCHEDULERS)
    check_number(cfg, "num_workers", minimum=0, integer=True)
    check_number(cfg, "seed", minimum=0, integer=True)
    pick_device(cfg["device"])
    resolve_data_cfg(cfg["data"])


def free_on_resume(cfg: Config) -> set[str]:
    """Keys a resume may change; `train.epochs` too unless the cosine schedule's length depends on it."""
    return FREE_ON_RESUME | ({"train.epochs"} if cfg["train"]["scheduler"] != "cosine" else set())


def build_optimizer(params, train_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Return the optimizer named by `train.optimizer` (adam, adamw or sgd)."""
    name, lr, wd = train_cfg["optimizer"], train_cfg["lr"], train_cfg["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=train_cfg["momentum"], weight_decay=wd)


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: dict[str, Any]):
    """Return the per-epoch LR scheduler named by `train.scheduler` (step, cosine or none)."""
    name = train_cfg["scheduler"]
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train_cfg["step_size"], gamma=train_cfg["gamma"])
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_cfg["epochs"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def run(cfg: Config) -> dict[str, Any]:
    """Train the classifier described by `cfg`; returns the last epoch's log record plus `best_val_acc`.

    Every check (config, data, images, weights, resume) runs before any file is written; only the
    main process of a torchrun job holds the folder's lock and writes.
    """
    check_config(cfg)
    dist_state, device = init_distributed(cfg["device"])
    out = classifier_dir(cfg)
    try:
        with hold_lock(out, f"stage 1 {STAGE}, exp {cfg['exp']}") if dist_state.is_main else contextlib.nullcontext():
            return _train(cfg, dist_state, device)
    finally:
        cleanup_distributed()


def _train(cfg: Config, dist_state, device: torch.device) -> dict[str, Any]:
    train_cfg, out = cfg["train"], classifier_dir(cfg)
    seed_everything(cfg["seed"])
    bench = build_benchmark(cfg["data"])
    if cfg["data"]["verify_images"] and dist_state.is_main:
        verify_benchmark_images(bench)
    model_args = model_args_from_config(cfg["model"], num_classes=len(bench.id_class_names))
    # weights to start from replace the pretrained ones: no need to fetch those
    model = build_vit(model_args, pretrained=cfg["model"]["pretrained"] and not cfg["model"]["init_weights"])
    if cfg["model"]["init_weights"]:
        load_weights(model, resolve_path(cfg["model"]["init_weights"]))
    model.to(device)
    spec = input_spec(model, cfg["data"])
    attach_transforms(bench, cfg["data"], spec)

    train_split, val_split = bench.splits["train_id"], bench.splits["val_id"]
    if len(val_split) == 0:
        raise DatasetError("val_id is empty, so no checkpoint could be selected: set data.val_fraction > 0 "
                           "(and data.limit_per_split large enough)")
    rank, world = dist_state.rank, dist_state.world_size
    train_sampler = EpochSampler(train_split.labels, shuffle=True, balanced=train_cfg["balanced_sampling"],
                                 seed=cfg["seed"], rank=rank, world_size=world)
    val_sampler = EpochSampler(val_split.labels, shuffle=False, rank=rank, world_size=world, pad=False)
    workers = cfg["num_workers"]
    train_loader = make_loader(train_split, train_cfg["batch_size"], train_sampler, workers, device)
    val_loader = make_loader(val_split, train_cfg["eval_batch_size"], val_sampler, workers, device)

    optimizer = build_optimizer(model.parameters(), train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    amp = train_cfg["amp"] and device.type == "cuda"
    scaler = grad_scaler(device, amp)
    start_epoch, best_acc = 0, -1.0
    training = TrainingRun(out, STAGE)
    state = training.start(cfg, free_on_resume(cfg), prepare=dist_state.is_main)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_acc = state["epoch"] + 1, state["best_val_acc"]
    if dist_state.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    is_main = dist_state.is_main
    if is_main:
        write_yaml(training.path("config.yaml"), cfg)
        bench.write_manifest(training.path("manifest.csv"))
        print(f"stage 1: {len(train_split)} train / {len(val_split)} val images, "
              f"{len(bench.id_class_names)} ID classes, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"device {device}, {world} process(es); writing to {out}", flush=True)
    record: dict[str, Any] = {"best_val_acc": best_acc}
    meta = {"model_args": model_args, "class_names": bench.id_class_names, "input_spec": spec, "config": cfg,
            "format": "wildcapture-vit-1"}
    epochs = tqdm(range(start_epoch, train_cfg["epochs"]), desc="stage 1 epochs", initial=start_epoch,
                  total=train_cfg["epochs"], disable=not is_main)
    for epoch in epochs:
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg["seed"], epoch))  # dropout/augmentation RNG depends on the epoch only
        train_sampler.set_epoch(epoch)
        train_loader.generator.manual_seed(epoch_seed(cfg["seed"], epoch))
        lr = optimizer.param_groups[0]["lr"]
        record = {"epoch": epoch, **train_one_epoch(model, train_loader, optimizer, scaler, device, epoch, amp,
                                                    train_cfg["grad_clip"], progress=is_main)}
        record.update(evaluate(model, val_loader, device, amp, progress=is_main))
        scheduler.step()
        record.update(lr=lr, seconds=round(time.perf_counter() - started, 3))
        if not is_main:
            continue
        weights = _unwrap(model).state_dict()
        if record["val_acc"] > best_acc:
            best_acc = record["val_acc"]
            training.save("best.pth", {**meta, "model": weights, "epoch": epoch, "val_acc": best_acc})
        record["best_val_acc"] = best_acc
        shown = {k: record[k] for k in ("train_loss", "val_loss", "val_acc")}
        summary = epoch_summary(epoch, train_cfg["epochs"], {**shown, "best": best_acc}, record["seconds"])
        training.log(record, summary)  # before last.pth: a resume drops the log lines of epochs after last.pth
        training.save("last.pth", {**meta, "model": weights, "epoch": epoch, "val_acc": record["val_acc"],
                                   "best_val_acc": best_acc, "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()})
    if is_main:
        training.commit({"exp": cfg["exp"], "epochs": train_cfg["epochs"], "best_val_acc": best_acc})
        print(f"stage 1 done: best val accuracy {best_acc:.4f}; wrote {out}", flush=True)
    return record
