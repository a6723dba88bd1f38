"""What the command-line entry points share: run a stage from its command line, and turn an error the user
can fix into one line on stderr and exit status 2 instead of a traceback.

This module does not import torch: the stage's library module is imported only after the arguments
parse, so `--help` and argument errors answer at once.
"""
from __future__ import annotations

import errno
import importlib
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from wildcapture.config import parse_stage_args
from wildcapture.errors import UserError

# The config keys that move the stages' outputs, named when a disk is full or not writable.
OUTPUT_KEYS = "output_dir/heatmaps_dir/results_dir"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# torch re-raises an error of a DataLoader worker with its own header, this line, then the worker's traceback.
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


def _own_message(err: BaseException) -> str:
    """Return the message of `err`; for an error re-raised from a DataLoader worker, the worker's original message."""
    text = str(err)
    if _WORKER_TRACEBACK not in text:
        return text
    cls = type(err)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    _, found, message = text.rpartition(f"\n{name}: ")  # the traceback's last line(s): "<module.Class>: <message>"
    return message.strip() if found else text.split("\n", 1)[0]


def user_error_message(err: BaseException, outputs: str = OUTPUT_KEYS) -> str | None:
    """Return the message to show for an error the user can fix, or None for a bug (which keeps its traceback).

    The user can fix a UserError, a missing file, and a disk that is full, read-only or not writable
    (`outputs` names the settings that move the outputs to another disk).
    """
    if isinstance(err, (UserError, FileNotFoundError)):
        return _own_message(err)
    if isinstance(err, OSError) and err.errno in _DISK_FULL | _NOT_WRITABLE:
        path, reason = err.filename or "the outputs", err.strerror or str(err)
        if err.errno in _DISK_FULL:
            return f"cannot write {path}: {reason}; free space or point {outputs} at another disk"
        if err.errno == errno.EROFS:
            return f"cannot write {path}: {reason}; point {outputs} at a writable disk"
        return f"cannot access {path}: {reason}; check its permissions, or point {outputs} at a folder you can write"
    return None


@contextmanager
def exit_on_user_error(outputs: str = OUTPUT_KEYS) -> Iterator[None]:
    """Run the `with` body; on an error the user can fix (see `user_error_message`) print `error: <message>`
    on stderr and exit with status 2. Other errors propagate with their traceback."""
    try:
        yield
    except Exception as err:
        message = user_error_message(err, outputs)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def stage_main(config_dir: Path, doc: str, module: str, argv: Sequence[str] | None = None) -> None:
    """Parse the command line against `config_dir/config.yaml`, then import `module` (a dotted name) and
    call its `run(cfg)`; exit 2 with one line on stderr on an error the user can fix.

    `doc` is the script's docstring, shown by `--help`.
    """
    with exit_on_user_error():
        cfg = parse_stage_args(config_dir, doc, argv)
        importlib.import_module(module).run(cfg)
