"""A compact autoencoder that works at the heatmap's native patch grid (no upsampling).

Any grid (4x4 digits, 14x14 ViT-B/16, odd or non-square sizes) and any channel count (1 for
`cls_last`, heads for `cls_heads`, blocks * heads for `cls_all`): 3x3 stride-1 convolutions keep the
grid, and a fully connected bottleneck of `zdim` units in the middle makes it undercomplete, so the
output has exactly the input's shape for every grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from wildcapture.cae.model import NEGATIVE_SLOPE, check_input


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(NEGATIVE_SLOPE)


class SmallAutoencoder(nn.Module):
    """Heatmap autoencoder at the native grid: (N, C, h, w) -> (N, C, h, w), linear output.

    Encoder: conv 3x3 C->width, conv 3x3 width->width (stride 1, padding 1), flatten, linear to zdim.
    Decoder: linear zdim -> width*h*w, unflatten, conv 3x3 width->width, conv 3x3 width->C.
    LeakyReLU(0.2) after every layer but the last, as in the paper's CAE.
    """

    LIMITS = {"width": 1024, "zdim": 4096}  # upper bounds of its own arguments

    def __init__(self, in_channels: int, grid: Sequence[int], width: int = 32, zdim: int = 8) -> None:
        super().__init__()
        grid = tuple(grid)
        for name, value in (("in_channels", in_channels), ("width", width), ("zdim", zdim), *zip(("grid",) * 2, grid)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= self.LIMITS.get(name, value):
                limit = f" <= {self.LIMITS[name]}" if name in self.LIMITS else ""
                raise ValueError(f"{name} must be a positive integer{limit}, got {value!r}")
        if len(grid) != 2:
            raise ValueError(f"grid must be (h, w), got {grid!r}")
        self.in_channels, self.grid, self.width, self.zdim = in_channels, grid, width, zdim
        cells = width * grid[0] * grid[1]
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1), _act(),
            nn.Conv2d(width, width, 3, 1, 1), _act(),
            nn.Flatten(),
            nn.Linear(cells, zdim), _act(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(zdim, cells), _act(),
            nn.Unflatten(1, (width, *grid)),
            nn.Conv2d(width, width, 3, 1, 1), _act(),
            nn.Conv2d(width, in_channels, 3, 1, 1),
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one input image."""
        return (self.in_channels, *self.grid)

    @property
    def resize_to(self) -> None:
        """None: the heatmaps enter this model at their native grid (`HeatmapPrep.size`)."""
        return None

    def constructor_args(self) -> dict[str, int | list[int]]:
        """Return the keyword arguments that rebuild this model: {"in_channels", "grid": [h, w], "width", "zdim"}."""
        return {"in_channels": self.in_channels, "grid": list(self.grid), "width": self.width, "zdim": self.zdim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction of x, shape (N, C, h, w) like x."""
        check_input(self, x)
        return self.decoder(self.encoder(x))
