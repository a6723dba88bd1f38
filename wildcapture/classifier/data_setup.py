"""Turning a data config plus a model into the benchmark's splits and loaders (stages 1 and 2)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from wildcapture.data.splits import Benchmark
from wildcapture.data.transforms import build_transforms
from wildcapture.runtime import available_cpus


def input_spec(model: nn.Module, data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Return the preprocessing the model expects: {"input_size": (H, W), "mean", "std", "interpolation"}.

    `data.mean`, `data.std` and `data.interpolation` override the model's own when set.
    """
    pretrained_cfg = getattr(model, "pretrained_cfg", {}) or {}
    height, width = model.patch_embed.img_size
    return {
        "input_size": [int(height), int(width)],
        "mean": list(data_cfg.get("mean") or pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(data_cfg.get("std") or pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": data_cfg.get("interpolation") or pretrained_cfg.get("interpolation", "bicubic"),
    }


def attach_transforms(bench: Benchmark, data_cfg: dict[str, Any], spec: dict[str, Any],
                      augment_train: bool = True) -> None:
    """Give every split plain resizing and normalisation, in place; `train_id` also gets the
    train-time augmentation when `augment_train`."""
    train_tf, eval_tf = build_transforms(data_cfg, tuple(spec["input_size"]), spec["mean"], spec["std"],
                                         spec["interpolation"])
    for name, split in bench.splits.items():
        split.transform = train_tf if name == "train_id" and augment_train else eval_tf


@functools.cache
def _note_capped_workers(asked: int, used: int) -> None:
    """Print, once per (asked, used) pair, that fewer worker processes than asked are used."""
    print(f"note: num_workers={asked} capped at the {used} CPUs available to this process", flush=True)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None, num_workers: int,
                device: torch.device, collate_fn: Callable | None = None) -> DataLoader:
    """Return an in-order DataLoader (or in `sampler`'s order) with pinned memory on CUDA; its
    `generator` seeds the worker RNGs (stage 1 reseeds it every epoch). `collate_fn`: None, torch's default.

    It uses at most one worker process per CPU available to this process (a note says so once).
    """
    workers = min(num_workers, available_cpus())
    if workers < num_workers:
        _note_capped_workers(num_workers, workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                      collate_fn=collate_fn)
