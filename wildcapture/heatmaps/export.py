"""Heatmaps as lossless 8-bit grayscale PNGs plus an ``img,label`` CSV (the paper's format).

Each PNG is scaled by its own maximum to the full 0..255 range, so the absolute attention
level is lost; ``heatmaps.npy`` (stage 2) is the exact record, the PNGs are for viewing and
for tools that expect the paper's image folders.

Multi-channel heatmaps (N, C, h, w) are written one PNG per image with its C channels stacked
top to bottom (a (C * h) x w image, channel k in rows k*h .. (k+1)*h - 1), scaled by the
image's maximum over all channels, so the channels keep their relative levels; the CSV then
has a third column, ``img,label,channels``, holding C. (N, h, w) heatmaps keep the paper's
two-column CSV.

The CSV's ``img`` column holds each PNG's path relative to the folder that holds the CSV
(forward slashes), so the folder can be moved as a whole.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image

from wildcapture.storage import write_csv

CSV_NAME = "heatmaps.csv"
HEADER = ["img", "label"]
CHANNELS_COLUMN = "channels"


def _to_uint8(hm: np.ndarray) -> np.ndarray:
    peak = float(hm.max())
    if peak <= 0.0:
        return np.zeros(hm.shape, dtype=np.uint8)
    return np.clip(np.rint(hm / peak * 255.0), 0, 255).astype(np.uint8)


def _png_relpath(name: str) -> PurePosixPath:
    rel = PurePosixPath(str(name).replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.name or rel.name in (".",):
        raise ValueError(f"heatmap name {name!r} must be a relative path without '..'.")
    return rel if rel.suffix.lower() == ".png" else rel.with_name(rel.name + ".png")


def export_heatmap_pngs(
    heatmaps: np.ndarray,
    out_dir: str | os.PathLike,
    names: Sequence[str],
    labels: Sequence,
) -> Path:
    """Write one grayscale PNG per heatmap and ``<out_dir>/heatmaps.csv``.

    Args:
        heatmaps: (N, h, w) or (N, C, h, w) non-negative array (e.g. stage 2's ``heatmaps.npy``);
            a multi-channel map becomes one (C * h) x w PNG, channels top to bottom.
        out_dir: folder to write into (created if needed).
        names: N file names, relative to ``out_dir``; ``.png`` is appended when missing.
            May contain sub-folders (``"id/img_0001"``).
        labels: N labels, written with ``str()``.

    Returns:
        Path of the CSV (columns ``img,label``, plus ``channels`` for (N, C, h, w) input; ``img``
        relative to the CSV's folder). The CSV is written last and atomically, so its presence
        means every PNG was written.
    """
    hms = np.asarray(heatmaps, dtype=np.float64)
    if hms.ndim not in (3, 4):
        raise ValueError(f"heatmaps must have shape (N, h, w) or (N, C, h, w), got {hms.shape}.")
    n = hms.shape[0]
    if len(names) != n or len(labels) != n:
        raise ValueError(f"got {n} heatmaps, {len(names)} names and {len(labels)} labels; "
                         f"they must be equal.")
    if not np.isfinite(hms).all():
        raise ValueError("heatmaps contain NaN or inf values.")
    if (hms < 0).any():
        raise ValueError("heatmaps contain negative values; attention maps must be >= 0.")
    rels = [_png_relpath(nm) for nm in names]
    dup = [str(r) for r, k in Counter(rels).items() if k > 1]
    if dup:
        raise ValueError(f"duplicate heatmap names: {dup[:5]}.")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for hm, rel in zip(hms, rels):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_to_uint8(hm.reshape(-1, hm.shape[-1]))).save(path, format="PNG")

    csv_path = out / CSV_NAME
    rows = ([str(rel), str(lab)] for rel, lab in zip(rels, labels))
    if hms.ndim == 4:
        write_csv(csv_path, HEADER + [CHANNELS_COLUMN], (row + [str(hms.shape[1])] for row in rows))
    else:
        write_csv(csv_path, HEADER, rows)
    return csv_path


def _parse_label(s: str) -> int | str:
    try:
        return int(s)
    except ValueError:
        return s


def read_heatmap_pngs(csv_path: str | os.PathLike) -> tuple[np.ndarray, list]:
    """Read back what ``export_heatmap_pngs`` wrote.

    Returns:
        ``(heatmaps, labels)``: heatmaps float32 in [0, 1] (pixel / 255, i.e. each map divided
        by its own maximum over all its channels), (N, h, w) for an ``img,label`` CSV and
        (N, C, h, w) for an ``img,label,channels`` one; labels as a list, integers where the
        CSV text is an integer, strings otherwise.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"heatmap CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = [c.strip() for c in rows[0]] if rows else []
    if header not in (HEADER, HEADER + [CHANNELS_COLUMN]):
        raise ValueError(f"{csv_path}: first line must be the header 'img,label' or 'img,label,channels'.")
    maps, labels = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{csv_path}, line {lineno}: expected {len(header)} columns, got {len(row)}.")
        png = csv_path.parent / row[0]
        if not png.is_file():
            raise FileNotFoundError(f"heatmap PNG listed in {csv_path} (line {lineno}) "
                                    f"is missing: {png}")
        try:
            with Image.open(png) as im:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        except Exception as e:  # PIL raises several types for corrupt files
            raise ValueError(f"cannot read heatmap PNG {png}: {e}") from e
        if len(header) == 3:
            arr = _split_channels(arr, row[2], f"{csv_path}, line {lineno} ({png})")
        if maps and arr.shape != maps[0].shape:
            raise ValueError(f"heatmap PNG {png} has {'channels x ' if arr.ndim == 3 else ''}size {arr.shape}, "
                             f"expected {maps[0].shape} like the first one.")
        maps.append(arr)
        labels.append(_parse_label(row[1]))
    if not maps:
        raise ValueError(f"{csv_path} lists no heatmaps.")
    return np.stack(maps).astype(np.float32), labels


def _split_channels(tiled: np.ndarray, channels: str, where: str) -> np.ndarray:
    """Return a (C * h, w) PNG of C channels stacked top to bottom as (C, h, w)."""
    try:
        count = int(channels)
    except ValueError:
        count = 0
    if count < 1 or tiled.shape[0] % count:
        raise ValueError(f"{where}: channels must be a whole number >= 1 that divides the image's height "
                         f"{tiled.shape[0]}, got {channels!r}.")
    return tiled.reshape(count, tiled.shape[0] // count, tiled.shape[1])
