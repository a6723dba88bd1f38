"""Atomic writes (checkpoints, arrays, CSV, text) and safe loading of checkpoints."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from wildcapture.errors import CheckpointError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`.

    A crash mid-write leaves the previous file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """Write `obj` with torch.save atomically to `path`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_array(array: np.ndarray, path: Path) -> None:
    """Write `array` as a .npy file atomically to `path` (no pickled objects)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    atomic_write(path, write)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV with `header` and `rows` atomically to `path` (UTF-8)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    atomic_write(path, write)


def append_log_line(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line to the log at `path` and print the same line."""
    line = json.dumps(record)
    with open(path, "a", encoding="utf-8") as log:
        log.write(line + "\n")
    print(line, flush=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` atomically to `path` (UTF-8)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_checkpoint(path: Path) -> Any:
    """Return the object stored at `path`, loaded with `weights_only=True` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle and zip errors come in many types
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt, or not a torch file): "
                              f"{type(err).__name__}: {err}") from err


def load_resume_state(out_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Return the contents of `out_dir/last.pth` when `resume` is set and the file exists, else None
    (saying so when a resume was asked for but there is nothing to resume from)."""
    path = Path(out_dir) / "last.pth"
    if not resume:
        return None
    if not path.is_file():
        print(f"train.resume=true but {path} does not exist: starting from epoch 0", flush=True)
        return None
    return load_checkpoint(path)
