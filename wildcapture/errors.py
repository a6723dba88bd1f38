"""Errors shared by several stages."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""
