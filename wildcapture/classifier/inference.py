"""Stage 2's single batched pass over a split: logits, pre-logits features and heatmaps together, handed batch
by batch to a sink (stage 2's `heatmap_store.SplitWriter`), so no split is held in memory. Under torchrun each
process takes every world-th batch; the processes go in lockstep rounds and the main process writes each
round's batches at their rows."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from wildcapture.heatmap_store import SplitArrays
from wildcapture.attention import forward_with_heatmaps
from wildcapture.runtime import DistState, one_behind, precision_context, shard_indices, to_host_later

# sink(start row, logits (B, K), features (B, D), heatmaps (B, [C,] h, w)), all float32
Sink = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]


class _Collect:
    """A sink that keeps the whole split in memory (benchmarks, small tests); `arrays()` returns it."""

    def __init__(self, n: int) -> None:
        self.n, self.parts = n, {}

    def __call__(self, start: int, *batch: np.ndarray) -> None:
        if not self.parts:
            self.parts = {k: np.empty((self.n, *t.shape[1:]), np.float32)
                          for k, t in zip(("logits", "features", "heatmaps"), batch)}
        for array, rows in zip(self.parts.values(), batch):
            array[start:start + len(rows)] = rows

    def arrays(self) -> SplitArrays:
        return SplitArrays(**self.parts)


def _batches(model: nn.Module, loader: Iterable, kind: str, block: int, device: torch.device, precision: str,
             desc: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (logits, features, heatmaps) float32 NumPy arrays per batch of `loader`, in order.

    Batch k is handed over once batch k+1's forward pass is launched; on CUDA its arrays are copied into pinned
    host memory without waiting, so the GPU computes the next batch while the caller stores this one (on the
    CPU the same order, at no gain, so one code path is tested everywhere). If batch k+1's forward pass raises,
    batch k is not handed over: the split is incomplete either way.
    """
    def launched() -> Iterator[Callable[[], tuple[torch.Tensor, ...]]]:
        for images, _ in tqdm(loader, desc=desc, leave=False):
            with precision_context(device, precision):
                batch = forward_with_heatmaps(model, images.to(device, non_blocking=True), kind, block)
            yield to_host_later(*batch)  # bf16/fp16 back to float32 before storing

    return (tuple(t.numpy() for t in wait()) for wait in one_behind(launched()))


@torch.inference_mode()
def infer_split(model: nn.Module, loader: Iterable, num_items: int, kind: str, block: int,
                device: torch.device, precision: str = "fp32", desc: str = "infer",
                sink: Optional[Sink] = None) -> SplitArrays | None:
    """Run `model` once over `loader` (in order) in `precision` (fp32, bf16 or fp16: `runtime.resolve_precision`)
    and hand each batch's logits, features and heatmaps (float32 whatever the precision) to `sink`; returns
    None, or without a sink the whole split's arrays in memory."""
    model.eval()
    collect = _Collect(num_items) if sink is None else None
    start = 0
    for batch in _batches(model, loader, kind, block, device, precision, desc):
        (sink or collect)(start, *batch)
        start += len(batch[0])
    if start != num_items:
        raise RuntimeError(f"{desc}: the loader gave {start} items, expected {num_items}")
    return collect.arrays() if collect else None


@torch.inference_mode()
def infer_split_sharded(model: nn.Module, dataset: Dataset, batch_size: int, make_loader, kind: str, block: int,
                        device: torch.device, state: DistState, precision: str = "fp32", desc: str = "infer",
                        sink: Optional[Sink] = None) -> SplitArrays | None:
    """`infer_split` over `dataset`, shared by the processes of a torchrun job; `sink` is called on the main
    process only, with every batch of the split at its rows (None on the others). Without a sink the main
    process returns the whole split's arrays in memory.

    `make_loader(dataset, batch_size)` builds the in-order DataLoader. Each process runs every
    world_size-th batch (`shard_indices`), so its batches, and so the arrays, are those of one process; the
    processes gather one batch each per round, so the main process holds one round at a time.
    """
    if not state.enabled:
        return infer_split(model, make_loader(dataset, batch_size), len(dataset), kind, block, device, precision,
                           desc, sink)
    model.eval()
    collect = _Collect(len(dataset)) if sink is None and state.is_main else None
    mine = make_loader(Subset(dataset, shard_indices(len(dataset), batch_size, state)), batch_size)
    batches = _batches(model, mine, kind, block, device, precision, f"{desc} (process {state.rank})")
    world = state.world_size
    rounds = -(-(-(-len(dataset) // batch_size)) // world)
    for r in range(rounds):
        parts: list | None = [None] * world if state.is_main else None
        dist.gather_object(next(batches, None), parts, dst=0)
        for rank, part in enumerate(parts or ()):
            if part is not None:
                (sink or collect)((r * world + rank) * batch_size, *part)
    return collect.arrays() if collect else None
