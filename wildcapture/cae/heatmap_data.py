"""Heatmaps for the CAE: load them, resize and normalise them once, batch them in memory.

The data is small (N x 14 x 14 for a ViT-B/16), so every prepared heatmap lives in one
tensor; an epoch is a `torch.randperm` plus `index_select`, with no DataLoader and no
per-image Python work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from wildcapture.heatmaps.export import read_heatmap_pngs

RESIZE_MODES = ("bilinear", "nearest")
NORMS = ("max", "minmax", "none")
_PREP_CHUNK = 4096  # images per F.interpolate call: bounds peak memory for large N


def load_heatmaps(source: str | Path) -> np.ndarray:
    """Load heatmaps from a stage-2 `heatmaps.npy` or a CSV of heatmap images.

    The CSV is the paper's released format (`img,label`; `img` a grayscale image path
    relative to the CSV's folder), read by `wildcapture.heatmaps.export.read_heatmap_pngs`.
    Returns an array (N, h, w) float32; CSV images are scaled to [0, 1].
    Raises FileNotFoundError for a missing file, ValueError (naming the file) for an
    unreadable, non-3-D or non-finite one.
    """
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"heatmap file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        heatmaps = _load_npy(path)
    elif suffix == ".csv":
        heatmaps = _load_csv(path)
    else:
        raise ValueError(f"{path}: expected a .npy array or a .csv of heatmap images")
    if not np.isfinite(heatmaps).all():
        raise ValueError(f"{path}: heatmaps contain NaN or infinite values")
    return heatmaps


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError or EOFError on bad files
        raise ValueError(f"{path}: not a readable .npy array ({err})") from err
    if array.ndim != 3:
        raise ValueError(f"{path}: expected heatmaps of shape (N, h, w), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _load_csv(path: Path) -> np.ndarray:
    heatmaps, _labels = read_heatmap_pngs(path)
    return np.ascontiguousarray(heatmaps, dtype=np.float32)


def prepare_heatmaps(
    heatmaps: torch.Tensor | np.ndarray, size: int, mode: str = "bilinear", norm: str = "max"
) -> torch.Tensor:
    """Resize heatmaps to size x size and normalise each one.

    heatmaps: (N, h, w). mode: "bilinear" (align_corners=False) or "nearest" (pixel-centre
    aligned, torch's "nearest-exact"; equal to repeating cells for integer factors).
    norm: "max" divides each map by its maximum (the paper); "minmax" maps each to
    [0, 1]; "none" leaves values. Maps whose max (resp. max - min) is 0 become zeros.
    Returns a float32 tensor (N, 1, size, size) on the CPU.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    heatmaps = torch.as_tensor(heatmaps)
    if heatmaps.dim() != 3:
        raise ValueError(f"heatmaps must have shape (N, h, w), got {tuple(heatmaps.shape)}")
    heatmaps = heatmaps.detach().to("cpu", torch.float32)
    out = torch.empty(heatmaps.shape[0], 1, size, size, dtype=torch.float32)
    for start in range(0, heatmaps.shape[0], _PREP_CHUNK):
        chunk = heatmaps[start:start + _PREP_CHUNK].unsqueeze(1)
        if tuple(chunk.shape[-2:]) != (size, size):
            if mode == "bilinear":
                chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False)
            else:
                chunk = F.interpolate(chunk, size=(size, size), mode="nearest-exact")
        out[start:start + chunk.shape[0]] = _normalise(chunk, norm)
    return out


def _normalise(x: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "none":
        return x
    hi = x.amax(dim=(-2, -1), keepdim=True)
    if norm == "max":
        lo, scale = torch.zeros_like(hi), hi
    else:
        lo = x.amin(dim=(-2, -1), keepdim=True)
        scale = hi - lo
    ok = scale > 0
    return torch.where(ok, (x - lo) / torch.where(ok, scale, torch.ones_like(scale)), 0.0)


def iterate_batches(
    x: torch.Tensor, batch_size: int, shuffle: bool, generator: Optional[torch.Generator] = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (indices (B,) int64, batch (B, ...)) covering every row of x once.

    Shuffled batches come from one `torch.randperm(N, generator=generator)`; unshuffled
    ones are views in order. The last batch may be smaller than batch_size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if order is None:
            yield torch.arange(start, stop), x[start:stop]
        else:
            idx = order[start:stop]
            yield idx, x.index_select(0, idx.to(x.device))
