"""One run per output folder at a time: an exclusive `flock` on `<folder>/.lock`.

The kernel drops the lock when its process ends, however it ends (kill -9 included), so a lock
left by a dead run never blocks the next one; forked children (DataLoader workers, which may outlive a
killed parent for a few seconds) close their copies at once. The lock file also records who holds it (pid,
what, start time), so a refused second run can name the running process. Whoever takes the lock
removes the temporary files that killed atomic writes left in the folder; a finished run may remove the
folder, lock file included (`remove_held`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Iterator, Sequence

from wildcapture.errors import RunLockedError
from wildcapture.storage import remove_stale_temporaries

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited_locks() -> None:
    """In a forked child (e.g. a DataLoader worker), close the copies of the parent's lock descriptors: the
    parent keeps its locks, and a child that outlives a killed parent does not keep them held."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        info = {}
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('what')}, started {info.get('started')})")


def _is_lock_file(handle: IO[str], path: Path) -> bool:
    """Whether `handle` is still the file at `path` (a finishing run may have removed it, see `remove_held`)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def _locked_handle(folder: Path) -> IO[str]:
    """Open and lock `folder`'s lock file (folder and file created if missing); returns its handle.
    RunLockedError naming the holder if another live process holds it. A lock file that its holder removed
    between our open and our lock (`remove_held`) is not the lock any more: the current one is taken instead."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")
        except FileNotFoundError:  # the folder was removed after our mkdir: by a run that just finished
            continue
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise RunLockedError(f"{folder} is in use by another run: {holder}; wait for it to finish or stop it, "
                                 "or write to another folder (exp=... or output_dir=...)") from None
        if _is_lock_file(handle, folder / LOCK_NAME):
            return handle
        handle.close()


@contextlib.contextmanager
def hold_lock(folder: Path, what: str) -> Iterator[Path]:
    """Hold the run lock of `folder` (created if missing) for the duration of the `with` block, after
    removing the folder's stale temporary files. When the block fails and left nothing in a folder this call
    created but the lock file, the folder (and the parents it created) is removed.

    `what` says which run holds it (e.g. "stage 1 train_classifier"). Yields the lock file's path.
    Raises RunLockedError naming the holder if another live process holds the lock.
    """
    folder = Path(folder)
    created = missing_folders(folder)
    handle = _locked_handle(folder)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        _HELD.add(handle.fileno())
        remove_stale_temporaries(folder, LOCK_NAME)
        try:
            yield folder / LOCK_NAME
        except BaseException:
            _remove_if_untouched(folder, created)
            raise
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        _HELD.discard(handle.fileno())
        handle.close()  # closing releases the flock


def missing_folders(path: Path) -> list[Path]:
    """Return `path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_untouched(folder: Path, created: list[Path]) -> None:
    """After a failed run: remove `folder` and its parents in `created` (the folders taking the lock made) when
    the run left nothing in `folder` but its lock file, so a run refused early leaves nothing behind."""
    if folder not in created or not folder.is_dir() or any(p.name != LOCK_NAME for p in folder.iterdir()):
        return  # not ours, already removed (a training run cleans up its own), or holding the run's files
    remove_held(folder)
    remove_empty(created[1:])


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each folder of `folders`, in order (deepest first), that is empty; leave the others (another
    run's files)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def clear_held(folder: Path) -> None:
    """Remove everything in `folder` but its lock file; call it inside `hold_lock(folder)`."""
    for path in Path(folder).iterdir():
        if path.name != LOCK_NAME:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def remove_held(folder: Path) -> None:
    """Remove `folder` whose lock this process holds (inside `hold_lock(folder)`): its other files, then the
    lock file, then the folder. A run that opened the lock file before is still refused until the `with`
    block ends; one that starts after makes a new lock file (and keeps the folder it then holds)."""
    clear_held(folder)
    (Path(folder) / LOCK_NAME).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a run started meanwhile holds a new lock file in it
        Path(folder).rmdir()


@contextlib.contextmanager
def hold_locks(folders: list[Path], what: str) -> Iterator[None]:
    """Hold the run locks of several folders (each once, in a fixed order, so runs cannot deadlock)."""
    unique = sorted({Path(f).resolve() for f in folders})
    with contextlib.ExitStack() as stack:
        for folder in unique:
            stack.enter_context(hold_lock(folder, what))
        yield
