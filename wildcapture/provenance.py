"""What made a file, and the checks at each hand-off that refuse a mismatch, naming both values.

The provenance of heatmaps is the part of stage 2's meta that decides what a heatmap means: which
classifier (by content hash), which preprocessing, which heatmap kind and block, and the precision the
classifier ran in (`heatmap.precision`: fp32, bf16 or fp16, resolved from stage 2's setting). A CAE checkpoint
stores the provenance of the heatmaps it learned; stage 4 and detect.py compare it with the
heatmaps they are given. The data set is not compared: scoring other images is the point. Nor does detect.py
compare the precision: it makes its heatmaps in the precision its machine runs best (docs/performance.md, "bf16 on the CPU",
measures that mixing them changes no result), and says both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wildcapture.errors import ConfigError, ProvenanceError
from wildcapture.paths import portable_path
from wildcapture.runtime import heatmap_precision

# (label in messages, path into the meta)
HEATMAP_IDENTITY = (
    ("heatmap.kind", ("heatmap", "kind")),
    ("heatmap.block", ("heatmap", "block")),
    ("classifier (SHA-256)", ("classifier", "sha256")),
    ("preprocessing", ("input_spec",)),
)


def classifier_identity(path: Path, sha256: str, model_args: dict[str, Any], class_names: list[str]
                        ) -> dict[str, Any]:
    """Return {"path" (repository-relative when inside it), "sha256" (of the bytes loaded), "model_args",
    "class_names"}."""
    return {"path": portable_path(path), "sha256": sha256, "model_args": model_args, "class_names": list(class_names)}


def heatmap_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Return the part of a stage-2 meta that a CAE checkpoint keeps: run, classifier, preprocessing,
    heatmap settings, data and the digests of the heatmap files."""
    heatmap_files = {name: digest for name, digest in meta["files"].items() if name.endswith("heatmaps.npy")}
    return {"run_id": meta["run_id"], "classifier": meta["classifier"], "input_spec": meta["input_spec"],
            "heatmap": meta["heatmap"], "data": meta["data"], "heatmap_files": heatmap_files}


def heatmap_dtype(provenance: dict[str, Any]) -> str:
    """Return how the heatmaps of a stage-2 meta or CAE provenance are stored ("float32" or "float16";
    metas older than `heatmap.dtype` stored float32)."""
    return (provenance.get("heatmap") or {}).get("dtype", "float32")


def check_same_precision(expected: dict[str, Any], actual: dict[str, Any], expected_what: str, actual_what: str,
                         fix: str) -> None:
    """Raise ProvenanceError if `expected` and `actual` record heatmaps of different precisions (see
    `heatmap_precision`); provenance that does not record it (older metas with amp=true) is not compared."""
    want, got = heatmap_precision(expected), heatmap_precision(actual)
    if want is not None and got is not None and want != got:
        raise ProvenanceError(f"{actual_what} were made in {got} but {expected_what} were made in {want} "
                              f"(heatmap.precision); {fix}")


def lookup(meta: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """Return meta[k0][k1]... for `keys`, or None where a level is missing."""
    for key in keys:
        meta = meta.get(key) if isinstance(meta, dict) else None
    return meta


def check_same_heatmaps(expected: dict[str, Any], actual: dict[str, Any], expected_what: str,
                        actual_what: str, fix: str) -> None:
    """Raise ProvenanceError naming the first of HEATMAP_IDENTITY, then the precision (`check_same_precision`), then
    the storage dtype (`heatmap_dtype`), that differs between the provenance `expected` (e.g. the CAE's) and `actual` (the heatmaps offered), with both
    values and `fix`."""
    for label, keys in HEATMAP_IDENTITY:
        want, got = lookup(expected, keys), lookup(actual, keys)
        if want != got:
            paths = [lookup(p, ("classifier", "path")) for p in (actual, expected)]
            both = f"{paths[0]} vs {paths[1]}" if paths[0] != paths[1] else f"{paths[0]} for both"
            raise ProvenanceError(f"{actual_what} differ from {expected_what} in {label}: {got!r} vs {want!r} "
                                  f"(classifier {both}); {fix}")
    check_same_precision(expected, actual, expected_what, actual_what, fix)
    want, got = heatmap_dtype(expected), heatmap_dtype(actual)
    if want != got:
        raise ProvenanceError(f"{actual_what} are stored as {got} but {expected_what} were stored as {want} "
                              f"(heatmap.dtype); {fix}")


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], free_keys: set[str], source: Path) -> None:
    """Raise ConfigError naming the first key (dotted) whose value differs between the `saved` config of the
    run being resumed and the `current` one, unless it is in `free_keys` (keys that do not change the model
    or its optimisation, e.g. `device`)."""
    flat_saved, flat_now = _flatten(saved), _flatten(current)
    for key in sorted(set(flat_saved) | set(flat_now)):
        if key in free_keys or any(key.startswith(k + ".") for k in free_keys):
            continue
        if flat_saved.get(key) != flat_now.get(key):
            raise ConfigError(f"train.resume=true, but {key}={flat_now.get(key)!r} differs from the run being resumed "
                              f"({key}={flat_saved.get(key)!r} in {source}): resume with {key}="
                              f"{flat_saved.get(key)!r}, or start afresh with train.resume=false")


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
