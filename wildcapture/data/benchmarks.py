"""`build_benchmark(data_cfg)`: every benchmark as four seeded splits (train_id, val_id, test_id, test_ood).

`data_cfg` is the ``data:`` section of a stage config (keys and defaults: `config.DATA_DEFAULTS`).
"""
from __future__ import annotations

from wildcapture.data.cifar import build_cifar
from wildcapture.data.config import resolve_data_cfg
from wildcapture.data.digits import build_digits
from wildcapture.data.splits import SPLITS, Benchmark, limit_split
from wildcapture.data.wildcapture_folders import build_imagefolder, build_wildcapture
from wildcapture.errors import DatasetError

_BUILDERS = {"digits": build_digits, "cifar10": build_cifar, "cifar100": build_cifar,
             "wildcapture": build_wildcapture, "imagefolder": build_imagefolder}

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
