"""WildCapture: attention-based out-of-distribution detection for images.

The shared library behind the four stage scripts (see README.md).
"""
__version__ = "0.1.0"
