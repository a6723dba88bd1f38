"""Defaults and validation of the ``data:`` config section.

`DATA_DEFAULTS` is read from `defaults.yaml` beside this file, the one definition of the section (the
stage configs merge it in too). `resolve_data_cfg` fills missing keys from it, rejects unknown keys and checks
value types and ranges, so the builders can trust what they read.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from wildcapture.data.ood_sources import source_of
from wildcapture.data.protocol import resolve_protocol
from wildcapture.errors import DatasetError
from wildcapture.paths import DATA_DEFAULTS_FILE


DATA_NAMES = ("digits", "cifar10", "cifar100", "wildcapture", "imagefolder")

DATA_DEFAULTS: dict[str, Any] = yaml.safe_load(DATA_DEFAULTS_FILE.read_text(encoding="utf-8"))
AUGMENT_DEFAULTS: dict[str, Any] = DATA_DEFAULTS["augment"]


def _check_fraction(cfg: dict, key: str) -> None:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise DatasetError(f"data.{key} must be a number in [0, 1), got {value!r}")


def _check_class_list(cfg: dict, key: str) -> None:
    value = cfg[key]
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise DatasetError(f"data.{key} must be null or a list of class names, got {value!r}")
    if len(set(map(str, value))) != len(value):
        raise DatasetError(f"data.{key} lists a class twice: {list(value)}")


def resolve_augment(augment: dict | None) -> dict[str, Any]:
    """Return the ``data.augment`` dict with defaults filled in and values checked."""
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise DatasetError(f"unknown key(s) data.augment.{unknown}; valid keys: {sorted(AUGMENT_DEFAULTS)}")
    out = {**AUGMENT_DEFAULTS, **augment}
    if not isinstance(out["hflip"], (int, float)) or not 0.0 <= out["hflip"] <= 1.0:
        raise DatasetError(f"data.augment.hflip must be a probability in [0, 1], got {out['hflip']!r}")
    rrc = out["random_resized_crop"]
    if rrc is not None and (not isinstance(rrc, (int, float)) or not 0.0 < rrc <= 1.0):
        raise DatasetError(f"data.augment.random_resized_crop must be null or a min scale in (0, 1], got {rrc!r}")
    if not isinstance(out["color_jitter"], (int, float)) or out["color_jitter"] < 0:
        raise DatasetError(f"data.augment.color_jitter must be a number >= 0, got {out['color_jitter']!r}")
    return out


def resolve_data_cfg(data_cfg: dict | None) -> dict[str, Any]:
    """Return a new, complete and checked copy of ``data_cfg`` (missing keys take `DATA_DEFAULTS`)."""
    data_cfg = dict(data_cfg or {})
    unknown = sorted(set(data_cfg) - set(DATA_DEFAULTS))
    if unknown:
        raise DatasetError(f"unknown key(s) in data config: {unknown}; valid keys: {sorted(DATA_DEFAULTS)}")
    cfg = copy.deepcopy({**DATA_DEFAULTS, **data_cfg})
    if cfg["name"] not in DATA_NAMES:
        raise DatasetError(f"unknown data.name {cfg['name']!r}; valid names: {', '.join(DATA_NAMES)}")
    _check_fraction(cfg, "val_fraction")
    _check_fraction(cfg, "test_fraction")
    _check_class_list(cfg, "id_classes")
    _check_class_list(cfg, "ood_classes")
    if not isinstance(cfg["verify_images"], bool):
        raise DatasetError(f"data.verify_images must be true or false, got {cfg['verify_images']!r}")
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        raise DatasetError(f"data.seed must be an integer >= 0, got {cfg['seed']!r}")
    limit = cfg["limit_per_split"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"data.limit_per_split must be null or an integer >= 1, got {limit!r}")
    cfg["augment"] = resolve_augment(cfg["augment"])
    if not isinstance(cfg["ood_sets"], (list, tuple)):
        raise DatasetError(f"data.ood_sets must be a list of sets {{name, group, source, ...}}, got {cfg['ood_sets']!r}")
    cfg["ood_sets"] = [dict(s) if isinstance(s, dict) else s for s in cfg["ood_sets"]]
    for spec in resolve_protocol(cfg).ood_sets:
        source_of(spec)
    return cfg


def data_identity(data_cfg: dict | None) -> dict[str, Any]:
    """Return the keys of a data config that decide which images (and labels) a split holds: the resolved
    config without `download`, `verify_images` and the train-time `augment`ation."""
    cfg = resolve_data_cfg(data_cfg)
    return {key: value for key, value in cfg.items() if key not in ("download", "verify_images", "augment")}
