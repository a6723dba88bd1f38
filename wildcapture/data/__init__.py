"""Datasets: every benchmark as four seeded splits (train_id, val_id, test_id, test_ood).

`build_benchmark(data_cfg)` is the entry point; `data_cfg` is the
``data:`` section of a stage config (keys and defaults: `config.DATA_DEFAULTS`).
"""
from __future__ import annotations

from wildcapture.errors import DatasetError

from .cifar import build_cifar
from .config import BENCHMARK_NAMES, DATA_DEFAULTS, data_identity, resolve_data_cfg
from .digits import build_digits
from .images import load_rgb
from .splits import SPLITS, Benchmark, ImageSplit, limit_split
from .transforms import build_transforms
from .wildcapture_folders import build_imagefolder, build_wildcapture

_BUILDERS = {"digits": build_digits, "cifar10": build_cifar, "cifar100": build_cifar,
             "wildcapture": build_wildcapture, "imagefolder": build_imagefolder}

__all__ = ["SPLITS", "BENCHMARK_NAMES", "DATA_DEFAULTS", "Benchmark", "ImageSplit", "DatasetError",
           "build_benchmark", "build_transforms", "data_identity", "load_rgb", "resolve_data_cfg"]


def build_benchmark(data_cfg: dict) -> Benchmark:
    """Build the benchmark ``data_cfg["name"]`` with its four splits (untransformed: the stages attach
    the model's transforms, see `wildcapture.classifier.data_setup.attach_transforms`).

    With ``limit_per_split``
    each split is cut to a seeded random subset after splitting, so a limited run's items are a
    subset of the full run's items of the same split. Raises DatasetError for any data problem,
    including an empty train_id, test_id or test_ood.
    """
    cfg = resolve_data_cfg(data_cfg)
    benchmark = _BUILDERS[cfg["name"]](cfg)
    for salt, name in enumerate(SPLITS):
        benchmark.splits[name] = limit_split(benchmark.splits[name], cfg["limit_per_split"], cfg["seed"], salt)
    empty = [n for n in ("train_id", "test_id", "test_ood") if len(benchmark.splits[n]) == 0]
    if empty:
        raise DatasetError(f"benchmark {cfg['name']!r} has empty split(s) {empty}; check data.id_classes, "
                           "data.ood_classes and the fractions")
    return benchmark
