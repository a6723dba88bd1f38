"""Every error the user can fix, in one light module (no torch import, so scripts can catch them cheaply).

`UserError` is the base: the command-line entry points print its message as one line on stderr and
exit with status 2, without a traceback. Each message names the thing to fix (a key, a file, a class).
"""


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
