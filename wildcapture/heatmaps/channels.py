"""The one rule for heatmap arrays with and without a channel axis.

Single-map kinds (`cls_last`, `rollout`) are stored as (N, h, w); multi-channel kinds (`cls_heads`:
one channel per head, `cls_all`: channel = block * heads + head) as (N, C, h, w). Every reader goes
through `as_channels`, so both shapes take one code path.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def as_channels(heatmaps: Array) -> Array:
    """Return `heatmaps` (N, h, w) or (N, C, h, w) as (N, C, h, w) (a view; C = 1 for 3-D input).

    Raises ValueError for any other number of dimensions.
    """
    if heatmaps.ndim == 3:
        return heatmaps[:, None]
    if heatmaps.ndim == 4:
        return heatmaps
    raise ValueError(f"heatmaps must have shape (N, h, w) or (N, C, h, w), got {tuple(heatmaps.shape)}")


def display_map(heatmap: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Return one image's heatmap (h, w) or (C, h, w) as the (h, w) map to show: channel `channel`, or the
    channel mean when None (for `cls_heads` that is the head mean, i.e. the `cls_last` map)."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim == 2:
        return heatmap
    if heatmap.ndim != 3:
        raise ValueError(f"a heatmap must have shape (h, w) or (C, h, w), got {heatmap.shape}")
    if channel is None:
        return heatmap.mean(axis=0)
    if not -heatmap.shape[0] <= channel < heatmap.shape[0]:
        raise ValueError(f"channel {channel} is out of range for a heatmap of {heatmap.shape[0]} channels")
    return heatmap[channel]
