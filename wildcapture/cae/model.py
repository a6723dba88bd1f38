"""The paper's convolutional autoencoder (CAE) for attention heatmaps.

Layer for layer the network of the released `AutoEncoder_Weights/AutoEncoderW.pt`
(1x128x128 input, zdim 512, 2,736,513 parameters), so that checkpoint loads strictly.
Only the bottleneck kernel depends on the input size: input_size / 16.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

NEGATIVE_SLOPE = 0.2


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(NEGATIVE_SLOPE)


class ConvAutoencoder(nn.Module):
    """Heatmap autoencoder: (N, 1, S, S) -> (N, 1, S, S), linear output.

    Encoder: four stride-2 convs take S to S/16, then a (S/16 x S/16) conv gives a
    zdim x 1 x 1 code. Decoder: a (S/16 x S/16) transposed conv back to S/16, then four
    stride-2 transposed convs back to S. LeakyReLU(0.2) after every layer but the last.
    """

    def __init__(self, input_size: int = 128, zdim: int = 512) -> None:
        super().__init__()
        if not isinstance(input_size, int) or input_size < 16 or input_size % 16:
            raise ValueError(f"input_size must be a positive multiple of 16, got {input_size!r}")
        if not isinstance(zdim, int) or zdim < 1:
            raise ValueError(f"zdim must be a positive integer, got {zdim!r}")
        self.input_size = input_size
        self.zdim = zdim
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
            ("0", nn.Conv2d(1, 32, 4, 2, 1)), ("1", _act()),
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
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
        )

    def constructor_args(self) -> dict:
        """Return the keyword arguments that rebuild this model: {"input_size", "zdim"}."""
        return {"input_size": self.input_size, "zdim": self.zdim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction of x, shape (N, 1, S, S) like x."""
        self._check_input(x)
        return self.decoder(self.encoder(x))

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (1, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ConvAutoencoder expects input of shape (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(x.shape)}"
            )
