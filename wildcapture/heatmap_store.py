"""Stage 2's output, the stage 2 -> 3/4 and detect hand-off: its format, writers (batch by batch, into staging) and
readers (which check the markers' keys, one run_id in both, every file's SHA-256). Row i of a split = one image.
    <heatmaps_dir>/heatmaps_meta.yaml    completion marker + provenance (META_KEYS), written last
    <heatmaps_dir>/<split>/heatmaps.npy  (N, [C,] grid_h, grid_w), row-major patch grid, stored as meta heatmap.dtype
    <heatmaps_dir>/<split>/              logits.npy (N, K), features.npy (N, D) float32, index.csv (INDEX_COLUMNS)
    <heatmaps_dir>/head_weight.npy, head_bias.npy   the classifier head (K, D) and (K,) float32: logits = W f + b
    <results_dir>/baseline_scores.csv    BASELINE_KEY_COLUMNS + per detector (higher = more OOD); marker RESULTS_MARKER
`commit_outputs` composes and commits both markers (stage 2 and benchmarks/make_synthetic_experiment.py call it);
cae/inputs.py reads heatmaps.npy as a HeatmapFile after `read_array` checked it; provenance.py takes its digests
from the meta; benchmarks/precision_agreement.py and bench_scale.py open heatmaps.npy directly.
"""
from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wildcapture.data.protocol import Protocol
from wildcapture.errors import DatasetError, IncompleteOutputError, ProvenanceError
from wildcapture.storage import Staging, read_marker, verify_file
from wildcapture.paths import HEATMAPS_META
from wildcapture.storage import save_array, write_csv

INDEX_COLUMNS = ("row", "source", "label", "class_name", "pred", "pred_name")
BASELINE_KEY_COLUMNS = ("split", "row", "source", "label")
ARRAYS = ("heatmaps", "logits", "features")
HEATMAP_DTYPES = ("float32", "float16")  # heatmap.dtype: how heatmaps.npy is stored (meta["heatmap"]["dtype"])
META_KEYS = ("run_id", "classifier", "input_spec", "data", "heatmap", "protocol", "splits")
RESULTS_STAGE = "evaluate_classifier"
RESULTS_MARKER = f"{RESULTS_STAGE}.complete.yaml"
RERUN = "stage 2 (Test_Classifier/test_classifier.py)"


@dataclass
class SplitArrays:
    """What stage 2 computed for one split; row i of every array is item i."""

    logits: np.ndarray    # (N, num_classes) float32
    features: np.ndarray  # (N, D) float32, the input of the classifier head
    heatmaps: np.ndarray  # (N, grid_h, grid_w) or, multi-channel, (N, C, grid_h, grid_w) float32

    @property
    def predictions(self) -> np.ndarray:
        """(N,) int64 predicted ID class index."""
        return self.logits.argmax(1)


@dataclass
class SplitIndex:
    """The items of a split, in row order: source (file path or array key), true label (-1 in an OOD set), true
    class."""

    sources: list[str]
    labels: list[int]
    class_names: list[str]


def heatmaps_staging(heatmaps_dir: Path) -> Staging:
    """The staging area of a stage-2 run writing `heatmaps_dir` (named apart from the results' one, so the
    two folders may be the same)."""
    return Staging(heatmaps_dir, "heatmaps", HEATMAPS_META)


def results_staging(results_dir: Path) -> Staging:
    """The staging area of a stage-2 run writing its reports and baseline scores to `results_dir`."""
    return Staging(results_dir, RESULTS_STAGE, RESULTS_MARKER)


@dataclass
class SplitWriter:
    """Writes one split's arrays, batch by batch, into `<split>/{heatmaps,logits,features}.npy` of `staging`.

    Each file is created at its final size by `numpy.lib.format.open_memmap` when the first batch gives the
    shapes, then filled with positioned writes (not through the mapping, so the rows written do not stay
    resident in this process). Heatmaps are stored as `heatmap_dtype`, logits and features as float32.
    """

    staging: Staging
    split: str
    n: int
    heatmap_dtype: str = "float32"
    _files: dict[str, tuple[Any, int, int, np.dtype]] = field(default_factory=dict)  # handle, offset, row bytes

    def _open(self, name: str, row_shape: tuple[int, ...]) -> None:
        dtype = np.dtype(self.heatmap_dtype if name == "heatmaps" else np.float32)
        path = self.staging.path(f"{self.split}/{name}.npy")
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self.n, *row_shape))
        offset = mapped.offset
        del mapped
        self._files[name] = (open(path, "r+b"), offset, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize,
                             dtype)

    def write(self, start: int, logits: np.ndarray, features: np.ndarray, heatmaps: np.ndarray) -> None:
        """Write rows start..start+B of the three arrays (B the batch's length)."""
        for name, rows in (("logits", logits), ("features", features), ("heatmaps", heatmaps)):
            if name not in self._files:
                self._open(name, tuple(rows.shape[1:]))
            handle, offset, row_bytes, dtype = self._files[name]
            if start + len(rows) > self.n:
                raise ValueError(f"{self.split}: rows {start}..{start + len(rows)} past the split's {self.n}")
            handle.seek(offset + start * row_bytes)
            handle.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())

    def close(self) -> SplitArrays:
        """Close the files; returns the split's arrays memory-mapped read-only from the staging folder."""
        for handle, *_ in self._files.values():
            handle.close()
        if len(self._files) != len(ARRAYS):
            raise RuntimeError(f"{self.split}: no batch was written")
        return SplitArrays(**{name: np.load(self.staging.path(f"{self.split}/{name}.npy"), mmap_mode="r")
                              for name in ARRAYS})


def write_head(staging: Staging, weight: np.ndarray, bias: np.ndarray) -> None:
    """Write the classifier head's weight (K, D) and bias (K,) into `staging` as float32 (ViM fits on them)."""
    for name, array in (("head_weight", weight), ("head_bias", bias)):
        save_array(np.asarray(array, dtype=np.float32), staging.path(f"{name}.npy"))


def read_head(heatmaps_dir: Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The classifier head stage 2 stored: (weight (K, D), bias (K,)) float64, digests checked against the meta.
    IncompleteOutputError for a stage-2 output without one (written before stage 2 stored it)."""
    weight, bias = (np.load(verify_file(meta, heatmaps_dir, f"{name}.npy", RERUN), allow_pickle=False)
                    for name in ("head_weight", "head_bias"))
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise DatasetError(f"the classifier head in {heatmaps_dir} has weight {weight.shape} and bias {bias.shape}; "
                           f"rerun {RERUN}")
    return weight.astype(np.float64), bias.astype(np.float64)


def write_index(staging: Staging, split: str, index: SplitIndex, predictions: np.ndarray,
                id_class_names: Sequence[str]) -> None:
    """Write the split's `index.csv` into `staging` (committed later with the meta)."""
    write_csv(staging.path(f"{split}/index.csv"), INDEX_COLUMNS,
              ((i, index.sources[i], int(index.labels[i]), index.class_names[i], int(pred), id_class_names[pred])
               for i, pred in enumerate(predictions)))


def write_baseline_scores(path: Path, index: dict[str, SplitIndex], scores: dict[str, dict[str, np.ndarray]],
                          protocol: Protocol) -> None:
    """Write one CSV row per test image of each of the protocol's test splits, in order: BASELINE_KEY_COLUMNS,
    then one column per detector ({split: {detector: scores (N,)}})."""
    detectors = list(scores[protocol.test_splits[0]])
    write_csv(path, [*BASELINE_KEY_COLUMNS, *detectors],
              ([name, i, index[name].sources[i], int(index[name].labels[i]),
                *(repr(float(scores[name][d][i])) for d in detectors)]
               for name in protocol.test_splits for i in range(len(index[name].sources))))


def commit_outputs(heat_stage: Staging, result_stage: Staging, provenance: dict[str, Any], protocol: Protocol,
                   outputs: dict[str, SplitArrays], results: dict[str, Any]) -> str:
    """Commit a stage-2 output whose files are staged: the results' marker (`results`, e.g. {"exp"}, plus the
    run id), then the heatmaps' meta, the hand-off marker, last: `provenance` (META_KEYS' "classifier",
    "input_spec", "data", "heatmap"), the protocol and each split's row count and heatmap shape. Returns the run
    id. ValueError when `outputs` lacks one of the protocol's splits or holds another."""
    if set(outputs) != set(protocol.splits):
        raise ValueError(f"stage-2 outputs hold splits {sorted(outputs)}, the protocol {list(protocol.splits)}")
    run_id = uuid.uuid4().hex
    result_stage.commit({"run_id": run_id, **results})
    splits = {name: {"n": int(outputs[name].heatmaps.shape[0]), "grid": list(outputs[name].heatmaps.shape[1:])}
              for name in protocol.splits}
    heat_stage.commit({"run_id": run_id, **provenance, "protocol": protocol.to_record(), "splits": splits})
    return run_id


def read_meta(heatmaps_dir: Path) -> dict[str, Any]:
    """Return stage 2's `heatmaps_meta.yaml` of `heatmaps_dir`, checked for every key it must hold.

    Raises IncompleteOutputError when stage 2 did not complete there (or wrote it before metas recorded the
    protocol).
    """
    return read_marker(Path(heatmaps_dir) / HEATMAPS_META, META_KEYS, RERUN)


def read_protocol(meta: dict[str, Any]) -> Protocol:
    """The protocol (ID splits and OOD sets) stage 2 recorded in `meta`; IncompleteOutputError when a split it
    names is missing from the meta's splits."""
    protocol = Protocol.from_record(meta["protocol"], f"{HEATMAPS_META} protocol")
    missing = [s for s in protocol.splits if s not in meta["splits"]]
    if missing:
        raise IncompleteOutputError(f"{HEATMAPS_META} names split(s) {missing} in its protocol but lists no such "
                                    f"split; rerun {RERUN}")
    return protocol


def _split_size(meta: dict[str, Any], split: str, heatmaps_dir: Path) -> int:
    info = meta["splits"].get(split)
    if info is None:
        raise IncompleteOutputError(f"{heatmaps_dir / HEATMAPS_META} lists no split {split}; rerun {RERUN}")
    return int(info["n"])


def read_array(heatmaps_dir: Path, meta: dict[str, Any], split: str, name: str) -> np.ndarray:
    """Return one of the split's arrays (`heatmaps`, `logits` or `features`) memory-mapped read-only, in its
    stored dtype (float32; heatmaps float16 when meta heatmap.dtype says so), after checking its SHA-256
    (hashed in chunks) and row count against the meta."""
    path = verify_file(meta, heatmaps_dir, f"{split}/{name}.npy", RERUN)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(f"{path} is not a readable .npy array ({err}); rerun {RERUN}") from err
    n = _split_size(meta, split, heatmaps_dir)
    if array.shape[0] != n:
        raise DatasetError(f"{path} has {array.shape[0]} rows but {HEATMAPS_META} says split {split} has {n}")
    return array


def read_index(heatmaps_dir: Path, meta: dict[str, Any], split: str) -> SplitIndex:
    """Return the split's `index.csv` (checked against the meta)."""
    path = verify_file(meta, heatmaps_dir, f"{split}/index.csv", RERUN)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return SplitIndex([r["source"] for r in rows], [int(r["label"]) for r in rows], [r["class_name"] for r in rows])


def read_baseline_scores(path: Path, meta: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Return {detector: {test split: scores (N,) float64}} from stage 2's `baseline_scores.csv` (every test split
    of the meta's protocol, with as many rows as the meta says; IncompleteOutputError otherwise).

    The results folder's marker must name the same stage-2 run (`run_id`) as the heatmaps' `meta`,
    and the file must be the one it lists; otherwise ProvenanceError / IncompleteOutputError.
    """
    path = Path(path)
    marker = read_marker(path.parent / RESULTS_MARKER, ("run_id",), RERUN)
    if marker["run_id"] != meta["run_id"]:
        raise ProvenanceError(f"{path} comes from stage-2 run {marker['run_id']} but the heatmaps come from run "
                              f"{meta['run_id']}: rerun {RERUN} so both come from the same pass, or set "
                              "test.baselines=false")
    verify_file(marker, path.parent, path.name, RERUN)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    detectors = [c for c in (rows[0] if rows else {}) if c not in BASELINE_KEY_COLUMNS]
    split_of = np.array([r["split"] for r in rows])
    values = np.array([[float(r[d]) for d in detectors] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    for split in read_protocol(meta).test_splits:
        if (split_of == split).sum() != _split_size(meta, split, path.parent):
            raise IncompleteOutputError(f"{path} has {(split_of == split).sum()} rows of split {split} but "
                                        f"{HEATMAPS_META} says {_split_size(meta, split, path.parent)}; rerun {RERUN}")
    return {d: {split: values[split_of == split, j] for split in read_protocol(meta).test_splits}
            for j, d in enumerate(detectors)}
