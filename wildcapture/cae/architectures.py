"""The CAE architectures (`cae.arch`) in one place: build one from its arguments, from the config and the
heatmaps' shape, the heatmap preparation it needs, and the config values a checkpoint stands for.

- `paper`: `ConvAutoencoder`, the paper's network; heatmaps are resized to `cae.input_size`.
- `small`: `SmallAutoencoder`, a compact network at the heatmaps' native grid (no resize).
Both take any number of heatmap channels C (from the data, not the config).
"""
from __future__ import annotations

from typing import Any, Sequence, Union

from wildcapture.cae.heatmap_data import HeatmapPrep
from wildcapture.cae.model import ConvAutoencoder
from wildcapture.cae.small_model import SmallAutoencoder
from wildcapture.errors import DatasetError

ARCHS = ("paper", "small")
CAEModel = Union[ConvAutoencoder, SmallAutoencoder]
_CLASSES = {"paper": ConvAutoencoder, "small": SmallAutoencoder}


def build_cae(arch: str = "paper", **args: Any) -> CAEModel:
    """Return a fresh CAE of architecture `arch` from its constructor arguments (`model_args` of a checkpoint,
    whose `arch` defaults to paper, as in checkpoints made before the small one existed)."""
    if arch not in _CLASSES:
        raise ValueError(f"unknown CAE architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return _CLASSES[arch](**args)


def cae_from_config(cae_cfg: dict[str, Any], input_shape: Sequence[int]) -> CAEModel:
    """Return the CAE `cae.*` describes for heatmaps of one image's shape `input_shape` (C, h, w)."""
    channels, height, width = (int(v) for v in input_shape)
    if cae_cfg["arch"] == "small":
        return SmallAutoencoder(channels, (height, width), cae_cfg["small_width"], cae_cfg["small_zdim"])
    return build_cae(cae_cfg["arch"], input_size=cae_cfg["input_size"], zdim=cae_cfg["zdim"], in_channels=channels)


def model_args(model: CAEModel) -> dict[str, Any]:
    """Return what a checkpoint stores to rebuild `model` with `build_cae(**args)`: {"arch", **constructor args}."""
    return {"arch": model.arch, **model.constructor_args()}


def config_values(args: dict[str, Any], prep: dict[str, Any]) -> dict[str, Any]:
    """Return the `cae.*` values (key without `cae.` -> value) a checkpoint of `model_args` `args` and heatmap
    preparation `prep` ({"resize", "norm"}, or {} for a bare state dict) was made with, arch first.
    Raises KeyError for missing arguments, ValueError for an unknown arch.

    The channel count and the small CAE's grid come from the heatmaps, not the config, so they are not
    among them; neither is `resize` for the small CAE, which does not resize.
    """
    arch = args.get("arch", "paper")
    if arch not in ARCHS:
        raise ValueError(f"unknown CAE architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if arch == "small":
        values = {"arch": arch, "small_width": args["width"], "small_zdim": args["zdim"]}
        return {**values, **{k: v for k, v in prep.items() if k != "resize"}}
    return {"arch": arch, "input_size": args["input_size"], "zdim": args["zdim"], **prep}


def heatmap_prep(model: CAEModel, resize: str, norm: str) -> HeatmapPrep:
    """Return the preparation of raw heatmaps into `model`'s input (resized to its side, or kept native)."""
    return HeatmapPrep(model.resize_to, resize, norm)


def check_fits(model: CAEModel, prep: HeatmapPrep, raw_shape: Sequence[int], source: str) -> None:
    """Raise DatasetError naming `source` and both shapes unless heatmaps of shape `raw_shape` ((N, h, w) or
    (N, C, h, w)), prepared by `prep`, have the model's input shape."""
    got, expected = prep.output_shape(raw_shape), tuple(model.input_shape)
    if got != expected:
        what = "channels" if model.resize_to is not None else "channels and patch grid"
        raise DatasetError(f"{source}: heatmaps of shape {tuple(raw_shape)} give CAE input (C, h, w) = {got}, but the "
                           f"{model.arch} CAE takes {expected}; it was built for heatmaps with other {what} "
                           "(another heatmap.kind or classifier): use a CAE trained on heatmaps like these")
