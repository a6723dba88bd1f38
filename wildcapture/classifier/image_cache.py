"""Stage 1's image cache: a split that fits in memory is decoded once, and each epoch's batches are made from
memory by tensor operations on the whole batch (`data.batch_transforms.BatchAugment`), instead of loading,
transforming and collating every image again every epoch (`train.cache_images`, `train.cache_mb`).

A split is cached in one of two geometries:

* `input`: the eval transform's resize and centre crop (`transforms.eval_resize`, PIL, as today) applied once
  per image, kept as uint8 at the model's input size. Batches are then (flipped, jittered) and normalised
  exactly as `ToTensor` + `Normalize` do it: with no random crop, a batch is bit-identical to the per-image
  path's (the flip and jitter draw their random numbers elsewhere). `val_id` always, `train_id` without
  `data.augment.random_resized_crop`. Any image sizes.
* `native`: the decoded images at their own size (all one size), for `train_id` with a random resized crop:
  each batch's boxes are drawn and resampled at once (`batch_transforms.crop_resize`, no antialiasing), so only
  images no larger than the input are taken (CIFAR's 32 px at an input of 32 px or more).

Under `auto` (the default, also null) a split is cached when its plan fits (`plan_cache`: train_id first, then
val_id, against the `train.cache_mb` budget, in MB per process); `true` is the same but an error names the split
that cannot be; `false` keeps the per-image DataLoader. Decoding goes through the split's own loader, so a
missing or corrupt image is a DatasetError naming the file, as in the per-image path.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from wildcapture.data.batch_transforms import GRID_SAMPLE_MODES, BatchAugment
from wildcapture.data.config import resolve_augment
from wildcapture.data.splits import ImageSplit
from wildcapture.data.transforms import eval_resize
from wildcapture.errors import ConfigError
from wildcapture.runtime import available_cpus

_CHUNK = 256  # images one decoding task fills
MB = 1 << 20


@dataclass(frozen=True)
class CachePlan:
    """How one split is cached: `geometry` 'input' or 'native', images of `size` (H, W), `nbytes` in all."""

    split: str
    geometry: str
    size: tuple[int, int]
    count: int

    @property
    def nbytes(self) -> int:
        return self.count * 3 * self.size[0] * self.size[1]


class NotCached(Exception):
    """Why a split is not cached (the message says it)."""


def cache_setting(train_cfg: dict[str, Any]) -> str | bool:
    """Return train.cache_images as 'auto', True or False (null is 'auto'); ConfigError for another value."""
    value = train_cfg.get("cache_images")
    if value is None or value == "auto":
        return "auto"
    if value is True or value is False:
        return value
    raise ConfigError(f"config key train.cache_images must be auto (or null), true or false; got {value!r}")


def _plan_split(name: str, split: ImageSplit, spec: dict[str, Any], crop_min_scale: float | None,
                budget: int) -> CachePlan:
    """The plan of one split, or NotCached saying why not. Decodes one image (the first) for a native cache."""
    size = (int(spec["input_size"][0]), int(spec["input_size"][1]))
    if crop_min_scale is None:
        plan = CachePlan(name, "input", size, len(split))
    else:
        if spec["interpolation"] not in GRID_SAMPLE_MODES:
            raise NotCached(f"its random resized crop would resize with {spec['interpolation']!r}, which the batched "
                            f"crop lacks ({', '.join(GRID_SAMPLE_MODES)})")
        width, height = split.load_image(0).size
        if height > size[0] or width > size[1]:
            raise NotCached(f"its images ({width}x{height}) are larger than the {size[1]}x{size[0]} input: the "
                            "batched random resized crop would downscale them without antialiasing")
        plan = CachePlan(name, "native", (height, width), len(split))
    if plan.nbytes > budget:
        raise NotCached(f"its {plan.count} images at {plan.size[1]}x{plan.size[0]} take {plan.nbytes / MB:.1f} MB, "
                        f"over the {budget / MB:.1f} MB left of train.cache_mb")
    return plan


def plan_cache(splits: dict[str, ImageSplit], augmented: Sequence[str], data_cfg: dict[str, Any],
               spec: dict[str, Any], train_cfg: dict[str, Any]) -> tuple[dict[str, CachePlan], dict[str, str]]:
    """Return (the plan of each split of `splits` to cache, why each other one is not), in `splits`' order, the
    budget (train.cache_mb) shared in that order. `augmented`: the splits trained on (data.augment applies).
    ConfigError under train.cache_images=true when a split cannot be cached."""
    setting = cache_setting(train_cfg)
    if setting is False:
        return {}, {name: "train.cache_images=false" for name in splits}
    budget = int(float(train_cfg.get("cache_mb", 0)) * MB)
    augment = resolve_augment(data_cfg.get("augment"))
    plans, reasons = {}, {}
    for name, split in splits.items():
        crop = augment["random_resized_crop"] if name in augmented else None
        try:
            if len(split) == 0:
                raise NotCached("it is empty")
            plans[name] = _plan_split(name, split, spec, None if crop is None else float(crop), budget)
            budget -= plans[name].nbytes
        except NotCached as why:
            if setting is True:
                raise ConfigError(f"train.cache_images=true, but {name} cannot be cached: {why}; set "
                                  "train.cache_images=auto (or false)") from None
            reasons[name] = str(why)
    return plans, reasons


def decode_split(split: ImageSplit, plan: CachePlan, interpolation: str, progress: bool = True) -> torch.Tensor:
    """Decode every image of `split` through its loader (and the eval resize for an 'input' plan) into a uint8
    tensor N x 3 x H x W, in threads. DatasetError names a file that cannot be read; NotCached names an image
    whose size differs from the plan's (a native plan)."""
    height, width = plan.size
    images = np.empty((len(split), 3, height, width), dtype=np.uint8)
    resize = eval_resize(plan.size, interpolation) if plan.geometry == "input" else None

    def fill(start: int) -> int:
        stop = min(start + _CHUNK, len(split))
        for i in range(start, stop):
            image = split.load_image(i)
            pixels = np.asarray(resize(image) if resize is not None else image)
            if pixels.shape != (height, width, 3):
                raise NotCached(f"image {split.sources[i]} is {pixels.shape[1]}x{pixels.shape[0]}, not "
                                f"{width}x{height} as the first one")
            images[i] = pixels.transpose(2, 0, 1)
        return stop - start

    workers = max(1, min(available_cpus(), math.ceil(len(split) / _CHUNK)))
    with tqdm(total=len(split), desc=f"cache {plan.split}", unit="img", leave=False, disable=not progress) as bar, \
            ThreadPoolExecutor(workers) as pool:
        for done in pool.map(fill, range(0, len(split), _CHUNK)):
            bar.update(done)
    return torch.from_numpy(images)


def batch_augment(plan: CachePlan, data_cfg: dict[str, Any], spec: dict[str, Any], augmented: bool) -> BatchAugment:
    """The batched transform of a split cached by `plan`: data.augment's for a split trained on, else the eval
    transform's normalisation."""
    augment = resolve_augment(data_cfg.get("augment")) if augmented else {"hflip": 0.0, "color_jitter": 0.0}
    return BatchAugment(spec["input_size"], spec["mean"], spec["std"], hflip=augment["hflip"],
                        crop_min_scale=augment["random_resized_crop"] if plan.geometry == "native" else None,
                        jitter=augment["color_jitter"], interpolation=spec["interpolation"])


class CachedBatches:
    """Batches (images on `device`, int64 labels) of a cached split in `sampler`'s order, made by `augment` with
    random draws from `generator` (on the CPU; stage 1 reseeds it every epoch, as a DataLoader's). Like stage
    1's DataLoaders it has `sampler`, `generator` and a length in batches."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], batch_size: int, sampler: Sampler[int],
                 augment: BatchAugment, device: torch.device, plan: CachePlan):
        self.images, self.labels = images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.batch_size, self.sampler, self.augment, self.device, self.plan = batch_size, sampler, augment, device, plan
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        for batch in order.split(self.batch_size):
            images = self.images.index_select(0, batch).to(self.device, non_blocking=True)
            yield self.augment(images, self.generator), self.labels[batch]

    def describe(self) -> str:
        size = f"{self.plan.size[1]}x{self.plan.size[0]}"
        where = "at the input size" if self.plan.geometry == "input" else "at their own size"
        return (f"{self.plan.count} images decoded once, kept in memory {where} ({size}, "
                f"{self.plan.nbytes / MB:.1f} MB); batches made as tensors: {self.augment.describe()}")
