"""The data package's error type (defined with the other user errors in `wildcapture.errors`)."""
from wildcapture.errors import DatasetError

__all__ = ["DatasetError"]
