"""Files on disk: atomic writes (checkpoints, arrays, CSV, text, YAML), digests, clean-up of the temporary
files a killed write leaves, safe loading of checkpoints, and a run's outputs (`Staging`, staged aside and
moved into place when the run succeeds) with their completion markers (`read_marker`, `verify_file`)."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import yaml

from wildcapture.errors import CheckpointError, IncompleteOutputError


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


# A run's outputs: written aside while it runs, moved into place when it succeeds, marked complete last.
#
# Every stage writes its new files under `<folder>/.<stage>.incomplete/` (a `Staging`). Only when the
# whole run has succeeded does `Staging.commit` (1) remove the folder's old completion marker, (2) move
# each new file into place with an atomic rename, (3) delete the files the old marker listed that this
# run did not produce, and (4) write the new marker atomically, last. A run that fails before the commit
# leaves the previous run's files byte-identical; a crash during the commit leaves no marker, so readers
# see "incomplete" instead of a mix.
#
# A marker is a YAML mapping holding `format`, `stage`, `completed` (time), the stage's own keys (its
# provenance), `files` ({relative path: SHA-256}) and, as its last line, `complete: true`. `read_marker`
# checks all of them: a missing, empty, unparsable or cut-off marker means "incomplete".

MARKER_FORMAT = "wildcapture-marker-1"
MARKER_KEYS = ("format", "stage", "completed", "files", "complete")  # `complete: true` is the last line


class Staging:
    """The new outputs of one run of `stage` for `final_dir`, kept in `final_dir/.<stage>.incomplete/`."""

    def __init__(self, final_dir: Path, stage: str, marker_name: str):
        self.final_dir = Path(final_dir)
        self.stage = stage
        self.marker_path = self.final_dir / marker_name
        self.dir = self.final_dir / f".{stage}.incomplete"

    def __enter__(self) -> "Staging":
        """Start afresh (`reset`); leaving the block by an exception discards what was staged."""
        return self.reset()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            if isinstance(exc, OSError) and exc.filename is None:  # e.g. a plot library's write: name the folder
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.final_dir)) from exc

    def reset(self) -> "Staging":
        """Empty the staging folder (a killed run's leftovers go); returns self."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        return self

    def path(self, relative: str | Path) -> Path:
        """Return where the new file `relative` (e.g. `train_id/heatmaps.npy`) is written; parents exist."""
        path = self.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def files(self) -> list[str]:
        """Return the relative POSIX paths of every staged file, sorted (temporary files excluded)."""
        return sorted(p.relative_to(self.dir).as_posix() for p in self.dir.rglob("*")
                      if p.is_file() and not p.name.endswith(TMP_SUFFIX))

    def commit(self, marker: dict[str, Any]) -> dict[str, Any]:
        """Move every staged file into `final_dir` and write the completion marker last.

        `marker` holds the stage's own keys (provenance); `format`, `stage`, `completed` and `files`
        are added. Returns the marker as written.
        """
        staged = self.files()
        digests = {name: sha256_file(self.dir / name) for name in staged}
        old_files = _listed_files(self.marker_path)
        self.marker_path.unlink(missing_ok=True)
        for name in old_files - set(staged):
            (self.final_dir / name).unlink(missing_ok=True)
        for name in staged:
            target = self.final_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.dir / name, target)
        full = {"format": MARKER_FORMAT, "stage": self.stage, "completed": time.strftime("%Y-%m-%d %H:%M:%S"),
                **marker, "files": digests, "complete": True}
        write_yaml(self.marker_path, full)
        shutil.rmtree(self.dir, ignore_errors=True)
        return full


def _listed_files(marker_path: Path) -> set[str]:
    """Return the files a (possibly damaged) old marker lists; empty if it lists none."""
    try:
        marker = yaml.safe_load(marker_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return set()
    files = marker.get("files") if isinstance(marker, dict) else None
    return {str(name) for name in files} if isinstance(files, dict) else set()


def read_marker(path: Path, required: Iterable[str] = (), what: str = "") -> dict[str, Any]:
    """Return the completion marker at `path` after checking it holds `MARKER_KEYS` and `required`.

    Raises IncompleteOutputError naming the folder (and `what` made it) when the marker is missing,
    empty, unparsable or lacks a key: the run that wrote the folder did not finish.
    """
    path = Path(path)
    rerun = f"; rerun {what}" if what else ""
    if not path.is_file():
        raise IncompleteOutputError(f"{path.parent} holds no complete output ({path.name}, written last by a "
                                    f"successful run, is missing){rerun}")
    try:
        marker = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise IncompleteOutputError(f"{path} is unreadable ({type(err).__name__}){rerun}") from err
    if not isinstance(marker, dict):
        raise IncompleteOutputError(f"{path} is empty or not a mapping: the run that wrote it did not finish{rerun}")
    missing = [key for key in (*MARKER_KEYS, *required) if marker.get(key) is None]
    if missing:
        raise IncompleteOutputError(f"{path} lacks {', '.join(missing)}: the run that wrote it did not finish{rerun}")
    if marker["complete"] is not True:
        raise IncompleteOutputError(f"{path} does not say complete: true{rerun}")
    if marker["format"] != MARKER_FORMAT:
        raise IncompleteOutputError(f"{path} has format {marker['format']!r}, expected {MARKER_FORMAT!r} "
                                    f"(written by another version){rerun}")
    return marker


def verify_file(marker: dict[str, Any], folder: Path, name: str, what: str = "") -> Path:
    """Return `folder/name` after checking its SHA-256 against the marker's `files` entry.

    Raises IncompleteOutputError if the marker does not list the file, or the file is missing or
    differs (changed since the run completed, or being rewritten right now).
    """
    path = Path(folder) / name
    rerun = f"; rerun {what}" if what else ""
    expected = marker["files"].get(name)
    if expected is None:
        raise IncompleteOutputError(f"{path} is not listed in the completion marker of {folder}{rerun}")
    if not path.is_file():
        raise IncompleteOutputError(f"{path} is missing although the completion marker lists it{rerun}")
    if sha256_file(path) != expected:
        raise IncompleteOutputError(f"{path} has changed since the run that wrote it completed (its SHA-256 differs "
                                    f"from the completion marker's){rerun}")
    return path


def check_completed_file(path: Path, marker_name: str, digest: str, required: bool, what: str) -> None:
    """Check that `path`, whose bytes have SHA-256 `digest`, is the file the completion marker `marker_name`
    beside it lists. Without that marker, or a file it does not list: IncompleteOutputError when
    `required` (the folder is a stage's own output, so it must be complete), else nothing to check
    (weights from elsewhere)."""
    marker_path = Path(path).parent / marker_name
    if not marker_path.is_file() and not required:
        return
    marker = read_marker(marker_path, (), what)
    listed = marker["files"].get(Path(path).name)
    if listed is None and not required:
        return  # a file of the user's own beside a stage's outputs
    if listed != digest:
        raise IncompleteOutputError(f"{path} is not the file the completed run in {marker_path.parent} wrote "
                                    f"(its SHA-256 differs from {marker_name}'s); rerun {what}")
