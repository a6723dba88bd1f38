"""Errors shared by several stages."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read."""
