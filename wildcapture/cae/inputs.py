"""The heatmaps stages 3 and 4 read: stage 2's output of the experiment, or heatmap files named in `inputs.*`.

Stage 2's files are read through `wildcapture.heatmap_store` (completion marker and SHA-256 checked);
their provenance travels into the CAE checkpoint. External files (a `.npy`, or the paper's `img,label`
CSV of heatmap images) carry none: their path and digest are recorded instead.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from wildcapture.cae.heatmap_data import HeatmapFile, load_heatmaps
from wildcapture.errors import DatasetError
from wildcapture.heatmap_store import SplitIndex, read_array, read_index, read_meta
from wildcapture.paths import heatmaps_dir, portable_path, resolve_path
from wildcapture.storage import sha256_file


def uses_external_heatmaps(cfg: dict[str, Any], splits: tuple[str, ...]) -> bool:
    """True when the heatmaps of `splits` come from `inputs.*` files rather than this experiment's stage 2
    (DatasetError if only some of them do)."""
    given = [split for split in splits if cfg["inputs"][split]]
    if given and len(given) != len(splits):
        missing = [f"inputs.{s}" for s in splits if s not in given]
        raise DatasetError(f"{', '.join(f'inputs.{s}' for s in given)} set but {', '.join(missing)} not: "
                           "give every split this stage reads as a file, or none")
    return bool(given)


def external_source(cfg: dict[str, Any], split: str) -> Path:
    """Return the heatmap file `inputs.<split>`; FileNotFoundError if it is missing."""
    path = resolve_path(cfg["inputs"][split])
    if not path.is_file():
        raise FileNotFoundError(f"heatmaps of split {split} not found: {path} (inputs.{split})")
    return path


def stage2_meta(cfg: dict[str, Any], splits: tuple[str, ...]) -> dict[str, Any] | None:
    """Return stage 2's checked meta of the experiment, or None when `splits` come from external files."""
    return None if uses_external_heatmaps(cfg, splits) else read_meta(heatmaps_dir(cfg))


def load_split_heatmaps(cfg: dict[str, Any], split: str, meta: dict[str, Any] | None
                        ) -> np.ndarray | HeatmapFile:
    """Return the split's raw heatmaps (N, h, w), or (N, C, h, w) for a multi-channel kind: from stage 2 when
    `meta`, a `HeatmapFile` (float32 or float16 as stored, digest checked, never loaded whole), else
    `inputs.<split>` as a float32 array."""
    if meta is not None:
        read_array(heatmaps_dir(cfg), meta, split, "heatmaps")  # digest, rows
        heatmaps = HeatmapFile(heatmaps_dir(cfg) / split / "heatmaps.npy")
        source = heatmaps_dir(cfg) / split
    else:
        source = external_source(cfg, split)
        try:
            heatmaps = load_heatmaps(source)
        except ValueError as err:
            raise DatasetError(f"cannot use the heatmaps of split {split}: {err}") from err
    if heatmaps.ndim not in (3, 4):
        raise DatasetError(f"heatmaps of split {split} in {source} have shape {heatmaps.shape}, expected (N, h, w) "
                           "or (N, C, h, w)")
    if len(heatmaps) == 0:
        raise DatasetError(f"split {split} is empty: no heatmaps in {source}")
    return heatmaps


def external_provenance(cfg: dict[str, Any], splits: tuple[str, ...]) -> dict[str, Any]:
    """Return {"external": {split: {"path", "sha256"}}} for heatmaps given as files."""
    return {"external": {split: {"path": portable_path(p), "sha256": sha256_file(p)}
                         for split in splits for p in [external_source(cfg, split)]}}


def load_split_index(cfg: dict[str, Any], split: str, meta: dict[str, Any] | None) -> SplitIndex:
    """Return the split's items: stage 2's `index.csv`, or the rows of an `img,label` heatmap CSV (ids are
    the heatmap files; OOD items get label -1 like ours). A `.npy` input has no index: ids are row numbers."""
    if meta is not None:
        return read_index(heatmaps_dir(cfg), meta, split)
    source = external_source(cfg, split)
    if source.suffix.lower() != ".csv":
        n = len(load_heatmaps(source))
        return SplitIndex([f"{source}#{i}" for i in range(n)], [-1 if split == "test_ood" else 0] * n, [""] * n)
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return SplitIndex([str((source.parent / r["img"]).resolve()) for r in rows],
                      [-1 if split == "test_ood" else _as_label(r["label"]) for r in rows],
                      [r["label"] for r in rows])


def _as_label(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text
