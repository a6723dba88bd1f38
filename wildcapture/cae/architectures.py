"""The CAE architectures (`cae.arch`): one registry line each, and what every architecture provides.

An architecture is an `nn.Module` class whose constructor takes the heatmaps' `in_channels` and patch
`grid` (h, w) (an architecture that resizes may ignore the grid) plus its own keyword arguments, which
are the config section `cae.<arch>` and, with `arch`, the checkpoint's `model_args`. It has
`constructor_args()` (those that rebuild it), `input_shape` (C, h, w) and `resize_to` (the side the
heatmaps are resized to, or None for the native grid). Its constructor raises ValueError starting
with the argument's name for a value it cannot use.
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import nn

from wildcapture.cae.heatmap_data import HeatmapPrep
from wildcapture.cae.model import ConvAutoencoder
from wildcapture.cae.small_model import SmallAutoencoder
from wildcapture.errors import ConfigError, DatasetError

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
