"""A run's outputs: written aside while it runs, moved into place when it succeeds, marked complete last.

Every stage writes its new files under `<folder>/.<stage>.incomplete/` (a `Staging`). Only when the
whole run has succeeded does `Staging.commit` (1) remove the folder's old completion marker, (2) move
each new file into place with an atomic rename, (3) delete the files the old marker listed that this
run did not produce, and (4) write the new marker atomically, last. A run that fails before the commit
leaves the previous run's files byte-identical; a crash during the commit leaves no marker, so readers
see "incomplete" instead of a mix.

A marker is a YAML mapping holding `format`, `stage`, `completed` (time), the stage's own keys (its
provenance), `files` ({relative path: SHA-256}) and, as its last line, `complete: true`. `read_marker`
checks all of them: a missing, empty, unparsable or cut-off marker means "incomplete".
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from wildcapture.errors import IncompleteOutputError
from wildcapture.storage import TMP_SUFFIX, sha256_file, write_yaml

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
