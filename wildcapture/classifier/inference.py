"""Stage 2's single batched pass over a split: logits, pre-logits features and heatmaps together."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wildcapture.classifier.engine import autocast_context
from wildcapture.heatmap_store import SplitArrays
from wildcapture.heatmaps import forward_with_heatmaps


@torch.inference_mode()
def infer_split(model: nn.Module, loader: Iterable, num_items: int, kind: str, block: int,
                device: torch.device, amp: bool = True, desc: str = "infer") -> SplitArrays:
    """Run `model` once over `loader` (in order) and return its logits, features and heatmaps."""
    model.eval()
    logits = features = heatmaps = None
    start = 0
    for images, _ in tqdm(loader, desc=desc, leave=False):
        with autocast_context(device, amp):
            batch = forward_with_heatmaps(model, images.to(device, non_blocking=True), kind, block)
        batch = [t.float().cpu().numpy() for t in batch]
        if logits is None:  # allocate once the shapes are known
            logits, features, heatmaps = (np.empty((num_items, *t.shape[1:]), np.float32) for t in batch)
        stop = start + len(batch[0])
        logits[start:stop], features[start:stop], heatmaps[start:stop] = batch
        start = stop
    if start != num_items:
        raise RuntimeError(f"{desc}: the loader gave {start} items, expected {num_items}")
    return SplitArrays(logits, features, heatmaps)
