"""Every error the user can fix, in one light module (no torch import, so scripts can catch them cheaply).

`UserError` is the base: the command-line entry points (`exit_on_user_error`) print its message as one line
on stderr and exit with status 2, without a traceback. Each message names the thing to fix (a key, a file, a class).
"""
from __future__ import annotations

import errno
import sys
from contextlib import contextmanager
from typing import Iterator



class UserError(Exception):
    """A problem the user can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key or file."""


class DatasetError(UserError):
    """A data problem (missing folder, bad class name, corrupt image, bad data.* value).

    The message always names the thing to fix: a path, a config key (``data.<key>``) or a class.
    """


class WeightsMismatchError(UserError, ValueError):
    """Weights do not fit the model; the message says what differs and which key to change."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file exists but cannot be read."""


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss."""


class ProvenanceError(UserError):
    """An input was made by another classifier, data set or heatmap setting than the reader expects;
    the message names both values."""


class IncompleteOutputError(UserError):
    """A stage's output folder holds no valid completion marker (the run that wrote it did not finish)."""


class RunLockedError(UserError):
    """Another run is writing the same output folder."""


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
