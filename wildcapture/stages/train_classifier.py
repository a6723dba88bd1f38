"""Stage 1: train the ViT classifier on the ID classes and keep the best and last checkpoints.

Outputs in `output_dir` (default `weights/<exp>/vit/`): `best.pth` (best val accuracy),
`last.pth` (end of the latest epoch, with optimizer state for `train.resume=true`),
`config.yaml` (the resolved config), `log.jsonl` (one JSON line per epoch), `manifest.csv`
(every item of every split) and, written last, `train_classifier.complete.yaml`. While the run
trains they live in `.train_classifier.incomplete/` (see `wildcapture.training_run`), so a failed
run leaves the previous one untouched; it keeps that folder, for `train.resume=true`, only if an epoch
completed.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from wildcapture.classifier.data_setup import attach_transforms, input_spec
from wildcapture.classifier.image_cache import (CachedBatches, NotCached, batch_augment, cache_setting, decode_split,
                                                plan_cache)
from wildcapture.runtime import make_loader
from wildcapture.classifier.engine import evaluate, train_one_epoch
from wildcapture.classifier.sampler import EpochSampler
from wildcapture.config import Config
from wildcapture.config_checks import check_choice, check_number, check_positive_ints
from wildcapture.data.build import build_splits
from wildcapture.data.config import resolve_data_cfg
from wildcapture.data.splits import DataSplits
from wildcapture.data.transforms import build_transforms
from wildcapture.errors import DatasetError
from wildcapture.data.verify import verify_split_images
from wildcapture.paths import classifier_dir, resolve_path
from wildcapture.runtime import (DistState, cleanup_distributed, epoch_seed, grad_scaler, init_distributed,
                                 pick_device, seed_everything)
from wildcapture.storage import write_yaml
from wildcapture.training_checkpoint import TrainingState
from wildcapture.training_run import TrainingRun, epoch_summary, run_outputs
from wildcapture.vit import build_vit, load_weights, model_args_from_config

STAGE = "train_classifier"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "none")
# Keys a resumed run may change: they do not change the model or its optimisation.
# train.cache_images and train.cache_mb choose how batches are made, not what is trained on (with data.augment
# they change the random draws, as num_workers does).
FREE_ON_RESUME = {"exp", "output_dir", "device", "num_workers", "train.resume", "train.eval_batch_size",
                  "data.verify_images", "data.download", "train.cache_images", "train.cache_mb"}


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
    cache_setting(cfg["train"])
    check_number(cfg, "train.cache_mb", minimum=0)
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


def outputs(cfg: Config) -> list[Path]:
    """The files a run writes in its output folder, the completion marker last."""
    return run_outputs(classifier_dir(cfg), STAGE, "manifest.csv")


def check(cfg: Config) -> list[Path]:
    """Every check of `run` that needs no training, writing nothing: the config, the data (never downloaded:
    missing data names the folder), the images (with data.verify_images), the start weights and a resume's
    compatibility. Returns `outputs(cfg)`."""
    check_config(cfg)
    bench = _benchmark_to_check(cfg["data"])
    if bench is not None and cfg["data"]["verify_images"]:
        verify_split_images(bench)
    if bench is not None and len(bench.splits["val_id"]) == 0:
        raise DatasetError("val_id is empty, so no checkpoint could be selected: set data.val_fraction > 0")
    classes = len(bench.id_class_names) if bench is not None else 2
    with torch.device("meta"):  # the architecture and its preprocessing, without weights or a download
        model = build_vit(model_args_from_config(cfg["model"], num_classes=classes))
    spec = input_spec(model, cfg["data"])
    build_transforms(cfg["data"], spec["input_size"], spec["mean"], spec["std"], spec["interpolation"])
    if bench is not None:
        plan_cache(_cached_splits(bench), ("train_id",), cfg["data"], spec, cfg["train"])
    weights = cfg["model"]["init_weights"]
    if weights and not resolve_path(weights).is_file():
        raise FileNotFoundError(f"model.init_weights: {resolve_path(weights)} not found")
    TrainingRun(classifier_dir(cfg), STAGE).start(cfg, free_on_resume(cfg), prepare=False)
    return outputs(cfg)


def _benchmark_to_check(data_cfg: dict[str, Any]) -> DataSplits | None:
    """The benchmark, never downloaded: None (with a note) when it is missing and data.download would fetch it;
    DatasetError naming the folder when it is missing otherwise."""
    try:
        return build_splits({**data_cfg, "download": False})
    except DatasetError as err:
        if not data_cfg.get("download"):
            raise
        print(f"note: the data are not there yet, and data.download=true fetches them: {err}", flush=True)
        return None


def run(cfg: Config) -> dict[str, Any]:
    """Train the classifier described by `cfg`; returns the last epoch's log record plus `best_val_acc`.

    Every check (config, data, images, weights, resume) runs before any file is written; only the
    main process of a torchrun job holds the folder's lock and writes. A run that fails keeps its
    staging folder only if an epoch completed (see `wildcapture.training_run`).
    """
    check_config(cfg)
    dist_state, device = init_distributed(cfg["device"])
    training = TrainingRun(classifier_dir(cfg), STAGE)
    try:
        with training.hold(f"stage 1 {STAGE}, exp {cfg['exp']}") if dist_state.is_main else contextlib.nullcontext():
            return _train(cfg, dist_state, device, training)
    finally:
        cleanup_distributed()


@dataclass
class _Loop:
    """What every epoch of a run uses."""

    cfg: Config
    training: TrainingRun
    state: TrainingState
    net: nn.Module  # state.model, wrapped in DistributedDataParallel under torchrun
    train_loader: DataLoader | CachedBatches
    val_loader: DataLoader | CachedBatches
    device: torch.device
    amp: bool
    is_main: bool
    meta: dict[str, Any]  # the checkpoints' own entries (model_args, class_names, input_spec)


def _train(cfg: Config, dist_state: DistState, device: torch.device, training: TrainingRun) -> dict[str, Any]:
    """Train from scratch or from the run resumed, then (main process) commit; returns the last epoch's
    log record plus `best_val_acc`."""
    seed_everything(cfg["seed"])
    bench, model, meta = _benchmark_and_model(cfg, dist_state, device)
    train_loader, val_loader = _loaders(cfg, bench, dist_state, device, meta["input_spec"])
    amp = cfg["train"]["amp"] and device.type == "cuda"
    state = _training_state(model, cfg["train"], grad_scaler(device, amp))
    start_epoch, saved = state.restore(training.start(cfg, free_on_resume(cfg), prepare=dist_state.is_main))
    net = model
    if dist_state.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist_state.is_main:
        _write_run_files(training, cfg, bench, net, f"device {device}, {dist_state.world_size} process(es)")
    loop = _Loop(cfg, training, state, net, train_loader, val_loader, device, amp, dist_state.is_main, meta)
    record = _fit(loop, start_epoch, saved.get("best_val_acc", -1.0))
    if dist_state.is_main:
        best_acc = record["best_val_acc"]
        training.commit({"exp": cfg["exp"], "epochs": cfg["train"]["epochs"], "best_val_acc": best_acc})
        print(f"stage 1 done: best val accuracy {best_acc:.4f}; wrote {training.out}", flush=True)
    return record


def _benchmark_and_model(cfg: Config, dist_state: DistState,
                         device: torch.device) -> tuple[DataSplits, nn.Module, dict[str, Any]]:
    """Build the data (its images checked if data.verify_images) and the model on `device`; returns (the
    benchmark with the model's transforms, the model, the checkpoints' own entries: model_args,
    class_names, input_spec). DatasetError if val_id is empty."""
    bench = build_splits(cfg["data"])
    if cfg["data"]["verify_images"] and dist_state.is_main:
        verify_split_images(bench)
    model_args = model_args_from_config(cfg["model"], num_classes=len(bench.id_class_names))
    # weights to start from replace the pretrained ones: no need to fetch those
    model = build_vit(model_args, pretrained=cfg["model"]["pretrained"] and not cfg["model"]["init_weights"])
    if cfg["model"]["init_weights"]:
        load_weights(model, resolve_path(cfg["model"]["init_weights"]))
    model.to(device)
    spec = input_spec(model, cfg["data"])
    attach_transforms(bench, cfg["data"], spec)
    if len(bench.splits["val_id"]) == 0:
        raise DatasetError("val_id is empty, so no checkpoint could be selected: set data.val_fraction > 0 "
                           "(and data.limit_per_split large enough)")
    return bench, model, {"model_args": model_args, "class_names": bench.id_class_names, "input_spec": spec}


def _cached_splits(bench: DataSplits) -> dict[str, Any]:
    """The splits stage 1 reads every epoch, in the order the image cache's budget goes to them."""
    return {"train_id": bench.splits["train_id"], "val_id": bench.splits["val_id"]}


def _loaders(cfg: Config, bench: DataSplits, dist_state: DistState, device: torch.device,
             spec: dict[str, Any]) -> tuple[DataLoader | CachedBatches, DataLoader | CachedBatches]:
    """Return this rank's loaders: train_id (shuffled per epoch, balanced if train.balanced_sampling) and
    val_id (in order); each from the image cache (`classifier.image_cache`) where train.cache_images takes it,
    else a per-image DataLoader. Prints (main process) which, and why."""
    train_cfg, rank, world = cfg["train"], dist_state.rank, dist_state.world_size
    splits = _cached_splits(bench)
    samplers = {"train_id": EpochSampler(splits["train_id"].labels, shuffle=True, seed=cfg["seed"], rank=rank,
                                         balanced=train_cfg["balanced_sampling"], world_size=world),
                "val_id": EpochSampler(splits["val_id"].labels, shuffle=False, rank=rank, world_size=world, pad=False)}
    sizes = {"train_id": train_cfg["batch_size"], "val_id": train_cfg["eval_batch_size"]}
    plans, reasons = plan_cache(splits, ("train_id",), cfg["data"], spec, train_cfg)
    loaders: dict[str, DataLoader | CachedBatches] = {}
    for name, split in splits.items():
        if name in plans:
            try:
                images = decode_split(split, plans[name], spec["interpolation"], progress=dist_state.is_main)
            except NotCached as why:  # a native cache whose images differ in size
                if train_cfg["cache_images"] is True:
                    raise DatasetError(f"train.cache_images=true, but {name} cannot be cached: {why}; set "
                                       "train.cache_images=auto (or false)") from None
                reasons[name] = str(why)
            else:
                augment = batch_augment(plans[name], cfg["data"], spec, augmented=name == "train_id")
                loaders[name] = CachedBatches(images, split.labels, sizes[name], samplers[name], augment, device,
                                              plans[name])
                continue
        loaders[name] = make_loader(split, sizes[name], samplers[name], cfg["num_workers"], device)
    if dist_state.is_main:
        print(_data_path_line(train_cfg, loaders, reasons, cfg["num_workers"]), flush=True)
    return loaders["train_id"], loaders["val_id"]


def _data_path_line(train_cfg: dict[str, Any], loaders: dict[str, Iterable], reasons: dict[str, str],
                    workers: int) -> str:
    """One line: how each split's batches are made (cached in memory, or loaded per image, and why)."""
    setting = "auto" if train_cfg["cache_images"] is None else str(train_cfg["cache_images"]).lower()
    parts = [f"{name}: " + (loader.describe() if isinstance(loader, CachedBatches)
                            else f"loaded per image every epoch ({workers} worker process(es)): {reasons[name]}")
             for name, loader in loaders.items()]
    return f"stage 1 data (train.cache_images={setting}, train.cache_mb={train_cfg['cache_mb']}): " + "; ".join(parts)


def _training_state(model: nn.Module, train_cfg: dict[str, Any], scaler: torch.amp.GradScaler) -> TrainingState:
    """Return `model` with the optimizer and LR scheduler of `train_cfg`, and `scaler`."""
    optimizer = build_optimizer(model.parameters(), train_cfg)
    return TrainingState(model, optimizer, build_scheduler(optimizer, train_cfg), scaler)


def _write_run_files(training: TrainingRun, cfg: Config, bench: DataSplits, model: nn.Module, where: str) -> None:
    """Stage the run's config.yaml and manifest.csv, and print what the run trains on `where`."""
    write_yaml(training.path("config.yaml"), cfg)
    bench.write_manifest(training.path("manifest.csv"))
    print(f"stage 1: {len(bench.splits['train_id'])} train / {len(bench.splits['val_id'])} val images, "
          f"{len(bench.id_class_names)} ID classes, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{where}; writing to {training.out}", flush=True)


def _fit(loop: _Loop, start_epoch: int, best_acc: float) -> dict[str, Any]:
    """Train epochs start_epoch .. train.epochs - 1 (counted from 0), the main process saving and logging each;
    returns the last epoch's log record, with `best_val_acc` on the main process."""
    epochs = loop.cfg["train"]["epochs"]
    record: dict[str, Any] = {"best_val_acc": best_acc}
    for epoch in tqdm(range(start_epoch, epochs), desc="stage 1 epochs", initial=start_epoch, total=epochs,
                      disable=not loop.is_main):
        record = _train_epoch(loop, epoch)
        if loop.is_main:
            best_acc = _save_epoch(loop, epoch, record, best_acc)
    return record


def _train_epoch(loop: _Loop, epoch: int) -> dict[str, Any]:
    """Train and validate one epoch, then step the LR schedule; returns the epoch's log record (losses,
    accuracies, the epoch's lr, seconds)."""
    started, seed, optimizer = time.perf_counter(), loop.cfg["seed"], loop.state.optimizer
    torch.manual_seed(epoch_seed(seed, epoch))  # dropout/augmentation RNG depends on the epoch only
    loop.train_loader.sampler.set_epoch(epoch)
    loop.train_loader.generator.manual_seed(epoch_seed(seed, epoch))
    lr = optimizer.param_groups[0]["lr"]
    record = {"epoch": epoch, **train_one_epoch(loop.net, loop.train_loader, optimizer, loop.state.scaler, loop.device,
                                                epoch, loop.amp, loop.cfg["train"]["grad_clip"], progress=loop.is_main)}
    record.update(evaluate(loop.net, loop.val_loader, loop.device, loop.amp, progress=loop.is_main))
    loop.state.scheduler.step()
    record.update(lr=lr, seconds=round(time.perf_counter() - started, 3))
    return record


def _save_epoch(loop: _Loop, epoch: int, record: dict[str, Any], best_acc: float) -> float:
    """Save best.pth if the epoch beat `best_acc`, log the epoch (adding `best_val_acc` to `record`), then save
    last.pth; returns the best val accuracy so far."""
    if record["val_acc"] > best_acc:
        best_acc = record["val_acc"]
        loop.training.save("best.pth", loop.state.checkpoint(epoch, loop.cfg, {**loop.meta, "val_acc": best_acc}))
    record["best_val_acc"] = best_acc
    shown = {k: record[k] for k in ("train_loss", "val_loss", "val_acc")}
    summary = epoch_summary(epoch, loop.cfg["train"]["epochs"], {**shown, "best": best_acc}, record["seconds"])
    loop.training.log(record, summary)  # before last.pth: a resume drops the log lines of epochs after last.pth
    extras = {**loop.meta, "val_acc": record["val_acc"], "best_val_acc": best_acc}
    loop.training.save("last.pth", loop.state.checkpoint(epoch, loop.cfg, extras, resumable=True))
    return best_acc
