"""Heatmaps for the CAE: load them, batch them, resize and normalise them on the training device.

Raw heatmaps stay at their native size: a tensor (in memory, or on the device when it fits), or a stage-2
`.npy` read through `HeatmapFile` (plain reads of the rows asked for, so nothing of the file stays resident: a
ViT-B/16 `cls_all` map is 144 x 14 x 14, 113 KB in float32). An epoch is one `torch.randperm`; `epoch_batches`
gathers it chunk by chunk (about `CHUNK_BYTES` of prepared maps), converts each chunk to float32 (float16
heatmaps included) and prepares it in one `HeatmapPrep` call on the device, then yields batches as views:
no DataLoader, no per-image Python work. Prepared up front, 128 x 128 maps would take 64 KiB per channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from wildcapture.attention import as_channels

RESIZE_MODES = ("bilinear", "nearest")
NORMS = ("max", "minmax", "none")
_PREP_CHUNK = 4096  # images per HeatmapPrep call in prepare_heatmaps: bounds its temporaries
CHUNK_BYTES = 64 << 20  # prepared float32 bytes per chunk of epoch_batches


class HeatmapFile:
    """A `.npy` of heatmaps (N, [C,] h, w), float32 or float16, read by rows with plain file reads into a fresh
    array or one the caller reuses: neither the file nor the page cache's pages of it count in this process's
    resident memory (a memory map would count every page the kernel maps around a fault, up to the whole file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{self.path} is not a C-ordered numeric array")
        self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)
        self.torch_dtype: torch.dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index: np.ndarray | slice | int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return rows `index` (an int array, in its order; a slice; an int) in the stored dtype, read into `out`
        (C-contiguous, that shape and dtype) when given, else into a new array."""
        if isinstance(index, (int, np.integer)):
            return self.rows(np.array([index]), None if out is None else out[None])[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step != 1:
                return self.rows(np.arange(start, stop, step), out)
            out = self._target(max(0, stop - start), out)
            with open(self.path, "rb") as handle:
                handle.seek(self.offset + start * self.row_bytes)
                handle.readinto(memoryview(out).cast("B"))
            return out
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < -self.shape[0] or index.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows of {self.path}")
        out = self._target(len(index), out)
        flat = memoryview(out.reshape(len(index), -1)).cast("B")
        with open(self.path, "rb") as handle:
            for i, row in enumerate(index % self.shape[0]):
                handle.seek(self.offset + int(row) * self.row_bytes)
                handle.readinto(flat[i * self.row_bytes:(i + 1) * self.row_bytes])
        return out

    def _target(self, n: int, out: Optional[np.ndarray]) -> np.ndarray:
        """Return `out` checked to hold n rows, or a new array for them."""
        if out is None:
            return np.empty((n, *self.shape[1:]), dtype=self.dtype)
        if out.shape != (n, *self.shape[1:]) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out is {out.dtype} {out.shape}, expected a C-contiguous {self.dtype} "
                             f"{(n, *self.shape[1:])} for rows of {self.path}")
        return out

    __getitem__ = rows


RawHeatmaps = Union[torch.Tensor, HeatmapFile]


def channel_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """Return (C, h, w) of one image of heatmaps of shape (N, h, w) (C = 1) or (N, C, h, w)."""
    return (1, *shape[1:]) if len(shape) == 3 else tuple(shape[1:])


def training_source(heatmaps: np.ndarray | HeatmapFile, device: torch.device) -> RawHeatmaps:
    """Return the heatmaps as stage 3 reads them: on CUDA, a device tensor when they take at most half its free
    memory (copied a chunk at a time); otherwise a `HeatmapFile` is read batch by batch (its batches are gathered and
    prepared on the device) and an array becomes a CPU tensor."""
    if isinstance(heatmaps, HeatmapFile):
        nbytes = int(np.prod(heatmaps.shape)) * heatmaps.dtype.itemsize
        if device.type != "cuda" or nbytes > torch.cuda.mem_get_info(device)[0] // 2:
            return heatmaps
        out = torch.empty(heatmaps.shape, dtype=heatmaps.torch_dtype, device=device)
        step = max(1, CHUNK_BYTES // max(1, nbytes // max(1, len(heatmaps))))
        for start in range(0, len(heatmaps), step):
            out[start:start + step] = torch.from_numpy(heatmaps.rows(slice(start, start + step))).to(device)
        return out
    return torch.from_numpy(np.ascontiguousarray(heatmaps)).to(device)


def load_heatmaps(source: str | Path) -> np.ndarray:
    """Load heatmaps from a stage-2 `heatmaps.npy` or a CSV of heatmap images.

    The CSV is the paper's released format (`img,label`; `img` a grayscale image path
    relative to the CSV's folder), read by `wildcapture.heatmaps.export.read_heatmap_pngs`.
    Returns an array (N, h, w) or, from a .npy of a multi-channel kind, (N, C, h, w), float32; CSV
    images are scaled to [0, 1].
    Raises FileNotFoundError for a missing file, ValueError (naming the file) for an
    unreadable, non-3-D/4-D or non-finite one.
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
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: expected heatmaps of shape (N, h, w) or (N, C, h, w), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _load_csv(path: Path) -> np.ndarray:
    from wildcapture.heatmaps.export import read_heatmap_pngs  # PNG heatmaps: only for the paper's CSV format

    heatmaps, _labels = read_heatmap_pngs(path)
    return np.ascontiguousarray(heatmaps, dtype=np.float32)


@dataclass(frozen=True)
class HeatmapPrep:
    """How raw heatmaps become the CAE's input: resize to size x size, then normalise each map.

    size: the CAE's input side S (pixels), or None to keep the native grid (the small CAE). resize:
    "bilinear" (align_corners=False) or "nearest" (pixel-centre aligned, torch's "nearest-exact"; equal
    to repeating cells for integer factors). norm: "max" divides each map by its maximum (the paper);
    "minmax" maps each to [0, 1]; "none" leaves values. Each channel of each image is a map of its own;
    maps whose max (resp. max - min) is not positive become zeros, and a map with a NaN stays NaN (stage 3 stops
    on the loss it gives rather than training on a map silently zeroed).
    """

    size: Optional[int]
    resize: str = "bilinear"
    norm: str = "max"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; valid: {', '.join(RESIZE_MODES)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")

    def output_shape(self, raw_shape: Sequence[int]) -> tuple[int, int, int]:
        """Return (C, S, S) (or (C, h, w) when size is None) of one prepared image of raw heatmaps of
        shape `raw_shape` ((N, h, w) or (N, C, h, w))."""
        shape = tuple(raw_shape)
        channels = 1 if len(shape) == 3 else shape[1]
        return (channels, *(shape[-2:] if self.size is None else (self.size, self.size)))

    def __call__(self, batch: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return batch (B, h, w) or (B, C, h, w) prepared: float32 (B, C, S, S) on batch's device (C = 1
        for 3-D input; (B, C, h, w) when size is None).

        out: a float32 tensor of that shape on that device to write the result into (and return), so a loop
        over chunks reuses one buffer instead of allocating (and, on the CPU, page-faulting) a new one each time.
        Each map is prepared on its own, so the result does not depend on which maps share a batch.
        """
        x = as_channels(batch)  # ValueError for other shapes
        expected = (x.shape[0], *self.output_shape(batch.shape))
        if out is not None and tuple(out.shape) != expected:
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {expected}")
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            return _normalise(_resize(x.to(torch.float32), self.size, self.resize, out), self.norm, in_place=True)
        if out is not None:
            return _normalise(out.copy_(x), self.norm, in_place=True)
        return _normalise(x.to(torch.float32), self.norm)


def _resize(x: torch.Tensor, size: int, mode: str, out: Optional[torch.Tensor]) -> torch.Tensor:
    """Return x (B, C, h, w) float32 resized to (B, C, size, size) by `mode` (see `HeatmapPrep`), into `out` when
    given; the `.out` operators are the ones `F.interpolate` calls, so the values are the same."""
    if out is None:
        if mode == "bilinear":
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    if mode == "bilinear":
        return torch.ops.aten.upsample_bilinear2d.out(x, [size, size], False, None, None, out=out)
    return torch.ops.aten._upsample_nearest_exact2d.out(x, [size, size], None, None, out=out)


def prepare_heatmaps(
    heatmaps: torch.Tensor | np.ndarray, size: Optional[int], mode: str = "bilinear", norm: str = "max"
) -> torch.Tensor:
    """Return every heatmap (N, h, w) or (N, C, h, w) prepared by `HeatmapPrep(size, mode, norm)`: float32
    (N, C, S, S) on the CPU, N * C * S * S * 4 bytes.

    For callers that need the whole prepared tensor (the reconstruction gallery); training and scoring
    prepare batch by batch instead.
    """
    prep = HeatmapPrep(size, mode, norm)
    heatmaps = as_channels(torch.as_tensor(heatmaps).detach().to("cpu", torch.float32))
    out = torch.empty(heatmaps.shape[0], *prep.output_shape(heatmaps.shape), dtype=torch.float32)
    for start in range(0, heatmaps.shape[0], _PREP_CHUNK):
        chunk = heatmaps[start:start + _PREP_CHUNK]
        prep(chunk, out=out[start:start + chunk.shape[0]])
    return out


def _normalise(x: torch.Tensor, norm: str, in_place: bool = False) -> torch.Tensor:
    """Return x (B, C, S, S) normalised per image and channel by `norm` (see `HeatmapPrep`), same shape;
    `in_place`: x itself, overwritten (for a tensor the caller owns)."""
    if norm == "none":
        return x
    hi = x.amax(dim=(-2, -1), keepdim=True)
    if norm == "max":
        scale = hi
    else:
        lo = x.amin(dim=(-2, -1), keepdim=True)
        scale = hi - lo
        x = x.sub_(lo) if in_place else x - lo
        in_place = True
    # dividing a (finite) map whose scale is not positive by infinity makes it zeros (-0.0 for negative cells,
    # equal to 0): one pass, no mask; a NaN stays NaN
    safe = torch.where(scale > 0, scale, torch.full_like(scale, float("inf")))
    return x.div_(safe) if in_place else x.div(safe)


def epoch_batches(source: RawHeatmaps, prep: HeatmapPrep, batch_size: int, device: torch.device | str,
                  shuffle: bool, generator: Optional[torch.Generator] = None, chunk_bytes: int = CHUNK_BYTES
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (indices (B,) int64, prepared batch float32 (B, C, S, S) on `device`) covering every row once.

    Shuffled: one `torch.randperm(N, generator=generator)`, batch k its rows k*B to (k+1)*B. Rows are
    gathered and prepared a chunk of whole batches at a time (about `chunk_bytes` prepared) into buffers that
    every chunk reuses (the raw rows and the prepared maps), so a batch holds its values until the next chunk
    is drawn: use each batch before asking for the next. Each map is prepared on its own, so the values do not
    depend on the chunking, and memory is bounded by the chunk, not N. Indices are on the CPU; the shuffled order
    goes to the source's device once per call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = source.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    on_source = order.to(source.device) if shuffle and isinstance(source, torch.Tensor) else order
    shape = prep.output_shape(source.shape)
    chunk = max(1, chunk_bytes // (4 * int(np.prod(shape)) * batch_size)) * batch_size
    buffer = torch.empty((min(chunk, n), *shape), dtype=torch.float32, device=device)
    from_file = isinstance(source, HeatmapFile)
    rows = torch.empty((min(chunk, n) if from_file or shuffle else 0, *source.shape[1:]),
                       dtype=source.torch_dtype if from_file else source.dtype,
                       device="cpu" if from_file else source.device,
                       pin_memory=from_file and torch.device(device).type == "cuda")  # unused in order from a tensor
    for start in range(0, n, chunk):
        idx, k = order[start:start + chunk], min(chunk, n - start)
        if from_file:
            source.rows(idx.numpy() if shuffle else slice(start, start + k), out=rows[:k].numpy())
            raw = rows[:k]
        elif shuffle:
            raw = torch.index_select(source, 0, on_source[start:start + chunk], out=rows[:k])
        else:
            raw = source[start:start + k]
        prepared = prep(raw.to(device), out=buffer[:k])
        for b in range(0, k, batch_size):
            yield idx[b:b + batch_size], prepared[b:b + batch_size]
