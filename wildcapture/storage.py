"""Atomic writes (checkpoints, arrays, CSV, text, YAML), file digests, clean-up of the temporary
files a killed write leaves, and safe loading of checkpoints."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import yaml

from wildcapture.errors import CheckpointError


TMP_SUFFIX = ".tmp"


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:  # name the file the user must make room for
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """Write `obj` with torch.save atomically to `path`."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # through a Python file, a full disk is an OSError (ENOSPC)
            torch.save(obj, handle)
    atomic_write(path, write)


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


def write_text(path: Path, text: str) -> None:
    """Write `text` atomically to `path` (UTF-8)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as YAML (keys in insertion order) atomically to `path`."""
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 digest of the file at `path` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path, foreign_marker: str = ".lock") -> list[Path]:
    """Delete the `.<name>.<random>.tmp` files that killed atomic writes left under `folder`
    (recursively); returns the removed paths. Call it only while holding the folder's run lock.

    A sub-folder holding a file named `foreign_marker` (another run's lock) is another run's: skipped.
    """
    stale = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.exists(os.path.join(root, d, foreign_marker))]
        stale += [Path(root) / f for f in files if f.startswith(".") and f.endswith(TMP_SUFFIX)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> Any:
    """Return the object stored at `path`, loaded with `weights_only=True` onto the CPU."""
    return load_checkpoint_with_digest(path)[0]


def load_checkpoint_with_digest(path: Path) -> tuple[Any, str]:
    """Return (the object stored at `path`, loaded with `weights_only=True` onto the CPU, the hex SHA-256 of
    the very bytes it was loaded from): no window in which the file could change between the two."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), hashlib.sha256(data).hexdigest()
    except Exception as err:  # pickle and zip errors come in many types
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt, or not a torch file): "
                              f"{type(err).__name__}: {err}") from err
