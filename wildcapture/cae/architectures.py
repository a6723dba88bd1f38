"""The CAE architectures (`cae.arch`): the paper's and a small one, the registry, and what each provides.

An architecture is an `nn.Module` class whose constructor takes the heatmaps' `in_channels` and patch
`grid` (h, w) (an architecture that resizes may ignore the grid) plus its own keyword arguments, which
are the config section `cae.<arch>` and, with `arch`, the checkpoint's `model_args`. It has
`constructor_args()` (those that rebuild it), `input_shape` (C, h, w) and `resize_to` (the side the
heatmaps are resized to, or None for the native grid). Its constructor raises ValueError starting
with the argument's name for a value it cannot use.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from wildcapture.cae.heatmap_data import HeatmapPrep
from wildcapture.errors import ConfigError, DatasetError


# `paper`: layer for layer the network of the released `AutoEncoder_Weights/AutoEncoderW.pt`
# (1x128x128 input, zdim 512, 2,736,513 parameters), so that checkpoint loads strictly.
# Only the bottleneck kernel depends on the input size: input_size / 16; only the first conv and the
# last transposed conv depend on the number of heatmap channels (1 for the paper).

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


# `small`: a compact autoencoder that works at the heatmap's native patch grid (no upsampling).
# Any grid (4x4 digits, 14x14 ViT-B/16, odd or non-square sizes) and any channel count (1 for
# `cls_last`, heads for `cls_heads`, blocks * heads for `cls_all`): 3x3 stride-1 convolutions keep the
# grid, and a fully connected bottleneck of `zdim` units in the middle makes it undercomplete, so the
# output has exactly the input's shape for every grid.

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


# Architecture name -> its class: a new architecture is one module (or class) and one line here.
ARCHITECTURES: dict[str, type[nn.Module]] = {"paper": ConvAutoencoder, "small": SmallAutoencoder}
DATA_ARGS = ("in_channels", "grid")  # constructor arguments that come from the heatmaps, not the config


def arch_of(model: nn.Module) -> str:
    """The registry name of `model`'s architecture."""
    return next(name for name, cls in ARCHITECTURES.items() if type(model) is cls)


def build_cae(arch: str = "paper", **args: Any) -> nn.Module:
    """Return a fresh CAE of architecture `arch` from its constructor arguments (a checkpoint's `model_args`;
    `arch` defaults to paper, as in checkpoints made before there was a choice)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown CAE architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**args)


def config_args(cae_cfg: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments `cae.<arch>` sets for the config's architecture ({} when it has no section:
    the constructor's defaults)."""
    return dict(cae_cfg.get(cae_cfg["arch"]) or {})


def configured_settings(cae_cfg: dict[str, Any]) -> dict[str, Any]:
    """The `cae.*` values a CAE built from `cae_cfg` stands for, keyed as `settings_of` keys them: arch, its
    arguments (the constructor's defaults where `cae.<arch>` does not set them), resize and norm."""
    arch = cae_cfg["arch"]
    params = inspect.signature(ARCHITECTURES[arch]).parameters.values() if arch in ARCHITECTURES else ()
    defaults = {p.name: p.default for p in params if p.default is not p.empty and p.name not in DATA_ARGS}
    own = {f"{arch}.{k}": v for k, v in {**defaults, **config_args(cae_cfg)}.items()}
    return {"arch": arch, **own, "resize": cae_cfg["resize"], "norm": cae_cfg["norm"]}


def cae_from_config(cae_cfg: dict[str, Any], input_shape: Sequence[int]) -> nn.Module:
    """Return the CAE `cae.*` describes for heatmaps of one image's shape `input_shape` (C, h, w)."""
    channels, height, width = (int(v) for v in input_shape)
    return build_cae(cae_cfg["arch"], in_channels=channels, grid=(height, width), **config_args(cae_cfg))


def check_arch_settings(cae_cfg: dict[str, Any]) -> None:
    """Raise ConfigError naming the key if `cae.arch` is not registered or `cae.<arch>` holds an argument its
    constructor refuses (checked by building it on the meta device, so nothing is allocated)."""
    arch = cae_cfg["arch"]
    if arch not in ARCHITECTURES:
        raise ConfigError(f"config key cae.arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
    try:
        with torch.device("meta"):
            build_cae(arch, in_channels=1, grid=(1, 1), **config_args(cae_cfg))
    except TypeError as err:
        raise ConfigError(f"cae.{arch}: {err} (the keys of cae.{arch} are {ARCHITECTURES[arch].__name__}'s "
                          "arguments)") from err
    except ValueError as err:
        if str(err).split(" ", 1)[0] in DATA_ARGS:  # about the stand-in shape: checked on the heatmaps' own
            return
        raise ConfigError(f"cae.{arch}.{err}") from err


def model_args(model: nn.Module) -> dict[str, Any]:
    """Return what a checkpoint stores to rebuild `model` with `build_cae(**args)`: {"arch", **constructor args}."""
    return {"arch": arch_of(model), **model.constructor_args()}


def settings_of(model: nn.Module, prep: dict[str, Any]) -> dict[str, Any]:
    """Return the config values (dotted key below `cae.` -> value) that `model` and heatmap preparation `prep`
    ({"resize", "norm"}, or {} for a bare state dict) stand for, arch first: the architecture's own arguments
    (not those from the heatmaps), then `prep` (without `resize` for an architecture that does not resize)."""
    arch = arch_of(model)
    own = {f"{arch}.{k}": v for k, v in model.constructor_args().items() if k not in DATA_ARGS}
    return {"arch": arch, **own, **{k: v for k, v in prep.items() if model.resize_to is not None or k != "resize"}}


def heatmap_prep(model: nn.Module, resize: str, norm: str) -> HeatmapPrep:
    """Return the preparation of raw heatmaps into `model`'s input (resized to its side, or kept native)."""
    return HeatmapPrep(model.resize_to, resize, norm)


def check_fits(model: nn.Module, prep: HeatmapPrep, raw_shape: Sequence[int], source: str) -> None:
    """Raise DatasetError naming `source` and both shapes unless heatmaps of shape `raw_shape` ((N, h, w) or
    (N, C, h, w)), prepared by `prep`, have the model's input shape."""
    got, expected = prep.output_shape(raw_shape), tuple(model.input_shape)
    if got != expected:
        what = "channels" if model.resize_to is not None else "channels and patch grid"
        raise DatasetError(f"{source}: heatmaps of shape {tuple(raw_shape)} give CAE input (C, h, w) = {got}, but the "
                           f"{arch_of(model)} CAE takes {expected}; it was built for heatmaps with other {what} "
                           "(another heatmap.kind or classifier): use a CAE trained on heatmaps like these")
