"""The heatmap/autoencoder variants a seed study compares, as data: edit VARIANTS and DEFAULT_VARIANTS here.

A variant is a name (its CAE is reported as `cae[<name>]`), key=value items for stage 2 (the heatmap
setting: runs whose items are equal share one stage-2 run per seed) and items for stages 3 and 4 (the
CAE). This module does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from wildcapture.config import parse_override
from wildcapture.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """One heatmap/CAE setting: `heatmap` items go to stage 2, `cae` items to stages 3 and 4."""

    name: str
    heatmap: tuple[str, ...]
    cae: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """The variant's folder name: its name with '/' replaced by '-'."""
        return self.name.replace("/", "-")

    @property
    def heatmap_folder(self) -> str:
        """The folder name of its stage-2 run: the values of the `heatmap` items joined by '_' ('default' if none)."""
        return "_".join(str(parse_override(item)[1]) for item in self.heatmap) or "default"


VARIANTS: tuple[Variant, ...] = (
    Variant("cls_last/paper", ("heatmap.kind=cls_last",), ("cae.arch=paper",)),
    Variant("cls_last/small", ("heatmap.kind=cls_last",), ("cae.arch=small",)),
    Variant("cls_heads/small", ("heatmap.kind=cls_heads",), ("cae.arch=small",)),
    Variant("cls_all/small", ("heatmap.kind=cls_all",), ("cae.arch=small",)),
    Variant("rollout/paper", ("heatmap.kind=rollout",), ("cae.arch=paper",)),
    # the CAE's input normalisation and capacity (docs/results.md: what was tried on real images)
    Variant("cls_all/small/norm_none", ("heatmap.kind=cls_all",), ("cae.arch=small", "cae.norm=none")),
    Variant("cls_all/small/minmax", ("heatmap.kind=cls_all",), ("cae.arch=small", "cae.norm=minmax")),
    Variant("cls_all/small/w64z32", ("heatmap.kind=cls_all",), ("cae.arch=small", "cae.small.width=64",
                                                                 "cae.small.zdim=32")),
    # the default variants on float16 heatmaps (heatmap.dtype; docs/heatmaps_and_autoencoders.md)
    Variant("cls_last/paper/f16", ("heatmap.kind=cls_last", "heatmap.dtype=float16"), ("cae.arch=paper",)),
    Variant("cls_last/small/f16", ("heatmap.kind=cls_last", "heatmap.dtype=float16"), ("cae.arch=small",)),
    Variant("cls_heads/small/f16", ("heatmap.kind=cls_heads", "heatmap.dtype=float16"), ("cae.arch=small",)),
    Variant("cls_all/small/f16", ("heatmap.kind=cls_all", "heatmap.dtype=float16"), ("cae.arch=small",)),
)
DEFAULT_VARIANTS: tuple[str, ...] = ("cls_last/paper", "cls_last/small", "cls_heads/small", "cls_all/small")


def pick_variants(names: Sequence[str]) -> list[Variant]:
    """Return the VARIANTS named in `names`, in that order; ConfigError for an unknown or repeated name,
    or for two heatmap settings that would share a stage-2 folder."""
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown variant '{unknown[0]}'; choose from {', '.join(known)}")
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"--variants needs one or more distinct names, got {list(names)}")
    picked = [known[n] for n in names]
    settings: dict[str, tuple[str, ...]] = {}
    for v in picked:
        if settings.setdefault(v.heatmap_folder, v.heatmap) != v.heatmap:
            raise ConfigError(f"variants with heatmap items {settings[v.heatmap_folder]} and {v.heatmap} would share "
                              f"the stage-2 folder '{v.heatmap_folder}': edit VARIANTS in {__name__}")
    return picked
