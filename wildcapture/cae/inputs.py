"""Where stages 3 and 4 read their heatmaps: `heatmap_source(cfg, keys)` returns one of two sources.

- `Stage2Heatmaps`: stage 2's run of the experiment (`wildcapture.heatmap_store`: marker and SHA-256
  checked); its provenance travels into the CAE checkpoint, and its features and logits feed the fusion.
- `ExternalHeatmaps`: files named in `inputs.*` (a `.npy`, or the paper's `img,label` CSV of heatmap
  images); they carry no provenance (their path and digest are recorded instead) and no features.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from wildcapture.cae.heatmap_data import HeatmapFile, load_heatmaps
from wildcapture.data.protocol import ID_SPLITS, Protocol, held_out_set
from wildcapture.errors import DatasetError
from wildcapture.heatmap_store import SplitIndex, read_array, read_head, read_index, read_meta, read_protocol
from wildcapture.paths import heatmaps_dir, portable_path, resolve_path
from wildcapture.provenance import heatmap_provenance
from wildcapture.storage import sha256_file


# Heatmap files (`inputs.<key>`) hold the ID splits and one OOD set, the benchmark's held-out classes.
EXTERNAL_PROTOCOL = Protocol.from_record([held_out_set()])
FIT_INPUTS = ("train_id", "val_id")   # the `inputs.*` keys stage 3 reads
TEST_INPUTS = ("test_id", "test_ood")  # the `inputs.*` keys stage 4 reads


def _split_of_key(key: str) -> str:
    """The split an `inputs.<key>` file holds (`test_ood`: the external protocol's one OOD set)."""
    return key if key in ID_SPLITS else EXTERNAL_PROTOCOL.ood_splits[0]


def _checked(heatmaps: np.ndarray | HeatmapFile, split: str, source: Path) -> np.ndarray | HeatmapFile:
    if heatmaps.ndim not in (3, 4):
        raise DatasetError(f"heatmaps of split {split} in {source} have shape {heatmaps.shape}, expected (N, h, w) "
                           "or (N, C, h, w)")
    if len(heatmaps) == 0:
        raise DatasetError(f"split {split} is empty: no heatmaps in {source}")
    return heatmaps


class Stage2Heatmaps:
    """The heatmaps, index, features and logits stage 2 wrote to `folder`, with its checked `meta`."""

    from_stage2 = True  # with stage 2's provenance, features, logits and baseline scores

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        self.protocol = read_protocol(self.meta)

    @property
    def run_id(self) -> str:
        """The stage-2 run the files come from."""
        return self.meta["run_id"]

    def describe(self) -> str:
        return f"the heatmaps in {self.folder}"

    def provenance(self) -> dict[str, Any]:
        """What the CAE records about the heatmaps it learns (`provenance.heatmap_provenance`)."""
        return heatmap_provenance(self.meta)

    def heatmaps(self, split: str) -> HeatmapFile:
        """The split's raw heatmaps (N, [C,] h, w), float32 or float16 as stored, digest checked, never loaded
        whole."""
        read_array(self.folder, self.meta, split, "heatmaps")  # digest, rows
        return _checked(HeatmapFile(self.folder / split / "heatmaps.npy"), split, self.folder / split)

    def index(self, split: str) -> SplitIndex:
        return read_index(self.folder, self.meta, split)

    def features_and_logits(self, split: str) -> dict[str, np.ndarray]:
        """{"features": (N, D), "logits": (N, C)} float32 of `split` (digests checked)."""
        return {name: read_array(self.folder, self.meta, split, name) for name in ("features", "logits")}

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The classifier head of the stage-2 run: (weight (C, D), bias (C,)) float64 (`heatmap_store.read_head`)."""
        return read_head(self.folder, self.meta)


class ExternalHeatmaps:
    """Heatmap files named in `inputs.<key>` for each split a stage reads (`files`: {split: path})."""

    from_stage2 = False
    protocol = EXTERNAL_PROTOCOL

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.run_id = None

    def describe(self) -> str:
        return "heatmap files (inputs.*)"

    def provenance(self) -> dict[str, Any]:
        """{"external": {split: {"path", "sha256"}}}: files carry no classifier or heatmap settings."""
        return {"external": {split: {"path": portable_path(p), "sha256": sha256_file(p)}
                             for split, p in self.files.items()}}

    def heatmaps(self, split: str) -> np.ndarray:
        """The split's heatmaps (N, [C,] h, w) as a float32 array."""
        try:
            return _checked(load_heatmaps(self.files[split]), split, self.files[split])
        except ValueError as err:
            raise DatasetError(f"cannot use the heatmaps of split {split}: {err}") from err

    def index(self, split: str) -> SplitIndex:
        """The rows of an `img,label` heatmap CSV (ids are the heatmap files; OOD items get label -1 like ours).
        A `.npy` input has no index: ids are row numbers."""
        source = self.files[split]
        if source.suffix.lower() != ".csv":
            try:
                n = len(HeatmapFile(source))  # the header's row count: `heatmaps` reads and checks the values
            except ValueError as err:
                raise DatasetError(f"cannot use the heatmaps of split {split}: {source}: not a readable .npy "
                                   f"array ({err})") from err
            return SplitIndex([f"{source}#{i}" for i in range(n)], [-1 if self.protocol.is_ood(split) else 0] * n,
                              [""] * n)
        with open(source, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return SplitIndex([str((source.parent / r["img"]).resolve()) for r in rows],
                          [-1 if self.protocol.is_ood(split) else _as_label(r["label"]) for r in rows],
                          [r["label"] for r in rows])

HeatmapSource = Stage2Heatmaps | ExternalHeatmaps


def heatmap_source(cfg: dict[str, Any], keys: tuple[str, ...]) -> HeatmapSource:
    """The source of the heatmaps a stage reads (`keys`: FIT_INPUTS or TEST_INPUTS): the files of `inputs.<key>`
    when they are set (all or none: DatasetError otherwise; FileNotFoundError naming a missing one), else stage
    2's run in `heatmaps_dir` (every split of its protocol)."""
    given = [key for key in keys if cfg["inputs"][key]]
    if not given:
        return Stage2Heatmaps(heatmaps_dir(cfg))
    if len(given) != len(keys):
        missing = [f"inputs.{k}" for k in keys if k not in given]
        raise DatasetError(f"{', '.join(f'inputs.{k}' for k in given)} set but {', '.join(missing)} not: "
                           "give every split this stage reads as a file, or none")
    files = {key: resolve_path(cfg["inputs"][key]) for key in keys}
    for key, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"heatmaps of split {key} not found: {path} (inputs.{key})")
    return ExternalHeatmaps({_split_of_key(key): path for key, path in files.items()})


def _as_label(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text
