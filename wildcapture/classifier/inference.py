"""Stage 2's single batched pass over a split: logits, pre-logits features and heatmaps together; under
torchrun each process takes every world-th batch and the main process reassembles them in order."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from wildcapture.heatmap_store import SplitArrays
from wildcapture.heatmaps import forward_with_heatmaps
from wildcapture.runtime import DistState, precision_context, shard_indices


@torch.inference_mode()
def infer_split(model: nn.Module, loader: Iterable, num_items: int, kind: str, block: int,
                device: torch.device, precision: str = "fp32", desc: str = "infer") -> SplitArrays:
    """Run `model` once over `loader` (in order) in `precision` (fp32, bf16 or fp16: `runtime.resolve_precision`)
    and return its logits, features and heatmaps, as float32 arrays whatever the precision."""
    model.eval()
    logits = features = heatmaps = None
    start = 0
    for images, _ in tqdm(loader, desc=desc, leave=False):
        with precision_context(device, precision):
            batch = forward_with_heatmaps(model, images.to(device, non_blocking=True), kind, block)
        batch = [t.float().cpu().numpy() for t in batch]  # bf16/fp16 back to float32 before storing
        if logits is None:  # allocate once the shapes are known
            logits, features, heatmaps = (np.empty((num_items, *t.shape[1:]), np.float32) for t in batch)
        stop = start + len(batch[0])
        logits[start:stop], features[start:stop], heatmaps[start:stop] = batch
        start = stop
    if start != num_items:
        raise RuntimeError(f"{desc}: the loader gave {start} items, expected {num_items}")
    return SplitArrays(logits, features, heatmaps)


def infer_split_sharded(model: nn.Module, dataset: Dataset, batch_size: int, make_loader, kind: str, block: int,
                        device: torch.device, state: DistState, precision: str = "fp32", desc: str = "infer"
                        ) -> SplitArrays | None:
    """`infer_split` over `dataset`, shared by the processes of a torchrun job; returns the whole split's
    arrays, in item order, on the main process and None on the others (the whole split in one process).

    `make_loader(dataset, batch_size)` builds the in-order DataLoader. Each process runs every
    world_size-th batch (`shard_indices`), so its batches, and so the arrays, are those of one process.
    """
    if not state.enabled:
        return infer_split(model, make_loader(dataset, batch_size), len(dataset), kind, block, device, precision, desc)
    mine = shard_indices(len(dataset), batch_size, state)
    part = infer_split(model, make_loader(Subset(dataset, mine), batch_size), len(mine), kind, block, device, precision,
                       f"{desc} (process {state.rank})")
    parts: list[SplitArrays] | None = [None] * state.world_size if state.is_main else None
    dist.gather_object(part, parts, dst=0)
    if not state.is_main:
        return None
    parts = [p for p in parts if p.logits is not None]  # processes left without a batch computed nothing
    order = np.concatenate([shard_indices(len(dataset), batch_size, DistState(r, r, state.world_size))
                            for r in range(state.world_size)]).astype(np.int64)
    whole = {}
    for name in ("logits", "features", "heatmaps"):
        stacked = np.concatenate([getattr(p, name) for p in parts])
        whole[name] = np.empty_like(stacked)
        whole[name][order] = stacked
    return SplitArrays(**whole)
