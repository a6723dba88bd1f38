"""The paper's convolutional autoencoder (CAE) for attention heatmaps.

Layer for layer the network of the released `AutoEncoder_Weights/AutoEncoderW.pt`
(1x128x128 input, zdim 512, 2,736,513 parameters), so that checkpoint loads strictly.
Only the bottleneck kernel depends on the input size: input_size / 16; only the first conv and the
last transposed conv depend on the number of heatmap channels (1 for the paper).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

NEGATIVE_SLOPE = 0.2


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(NEGATIVE_SLOPE)


class ConvAutoencoder(nn.Module):
    """Heatmap autoencoder: (N, C, S, S) -> (N, C, S, S), linear output (C = in_channels, 1 for the paper).

    Encoder: four stride-2 convs take S to S/16, then a (S/16 x S/16) conv gives a
    zdim x 1 x 1 code. Decoder: a (S/16 x S/16) transposed conv back to S/16, then four
    stride-2 transposed convs back to S. LeakyReLU(0.2) after every layer but the last.
    """

    def __init__(self, input_size: int = 128, zdim: int = 512, in_channels: int = 1,
                 grid: Sequence[int] | None = None) -> None:
        """`grid`, the heatmaps' patch grid, is not used: every heatmap is resized to `input_size`."""
        super().__init__()
        if not isinstance(input_size, int) or input_size < 16 or input_size % 16:
            raise ValueError(f"input_size must be a positive multiple of 16, got {input_size!r}")
        for name, value in (("zdim", zdim), ("in_channels", in_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.input_size = input_size
        self.zdim = zdim
        self.in_channels = in_channels
        k = input_size // 16

        final_convs = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1), _act(),
            nn.Conv2d(32, 64, 4, 2, 1), _act(),
            nn.Conv2d(64, 64, 3, 1, 1), _act(),
            nn.Conv2d(64, 128, 4, 2, 1), _act(),
            nn.Conv2d(128, 64, 3, 1, 1), _act(),
            nn.Conv2d(64, 32, 3, 1, 1), _act(),
            nn.Conv2d(32, zdim, k, 1, 0), _act(),
        )
        self.encoder = nn.Sequential(OrderedDict([
            ("0", nn.Conv2d(in_channels, 32, 4, 2, 1)), ("1", _act()),
            ("2", nn.Conv2d(32, 32, 4, 2, 1)), ("3", _act()),
            ("final_convs", final_convs),
        ]))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(zdim, 32, k, 1, 0), _act(),
            nn.Conv2d(32, 64, 3, 1, 1), _act(),
            nn.Conv2d(64, 128, 3, 1, 1), _act(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), _act(),
            nn.Conv2d(64, 64, 3, 1, 1), _act(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), _act(),
            nn.Conv2d(32, 32, 3, 1, 1), _act(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1),
            nn.ConvTranspose2d(32, in_channels, 4, 2, 1),
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of one input image."""
        return (self.in_channels, self.input_size, self.input_size)

    @property
    def resize_to(self) -> int:
        """The side S the heatmaps are resized to before they enter this model (`HeatmapPrep.size`)."""
        return self.input_size

    def constructor_args(self) -> dict[str, int]:
        """Return the keyword arguments that rebuild this model: {"input_size", "zdim", "in_channels"}."""
        return {"input_size": self.input_size, "zdim": self.zdim, "in_channels": self.in_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction of x, shape (N, C, S, S) like x."""
        check_input(self, x)
        return self.decoder(self.encoder(x))


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ValueError naming the expected and the given shape unless x is (N, *model.input_shape)."""
    expected = tuple(model.input_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"{type(model).__name__} expects input of shape (N, {', '.join(map(str, expected))}), "
                         f"got {tuple(x.shape)}")
