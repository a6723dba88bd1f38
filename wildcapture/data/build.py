"""`build_splits(data_cfg)`: a data set's seeded ID splits and one split per OOD set of its protocol.

`data_cfg` is the ``data:`` section of a stage config (keys and defaults: `config.DATA_DEFAULTS`).
"""
from __future__ import annotations

from dataclasses import replace

from wildcapture.data.cifar import build_cifar
from wildcapture.data.config import resolve_data_cfg
from wildcapture.data.digits import build_digits
from wildcapture.data.ood_sources import source_of
from wildcapture.data.protocol import TEST_ID, TRAIN_ID, OODSet, resolve_protocol
from wildcapture.data.splits import DataSplits, limit_split
from wildcapture.data.wildcapture_folders import build_imagefolder, build_wildcapture
from wildcapture.errors import DatasetError

_BUILDERS = {"digits": build_digits, "cifar10": build_cifar, "cifar100": build_cifar,
             "wildcapture": build_wildcapture, "imagefolder": build_imagefolder}


def _without_download(spec: OODSet) -> OODSet:
    """`spec` with its own `download` option (if any) false."""
    return replace(spec, options=tuple((k, False if k == "download" else v) for k, v in spec.options))


def build_splits(data_cfg: dict, download: bool = True) -> DataSplits:
    """Build the data set ``data_cfg["name"]``: its ID splits, then each OOD set of its protocol
    (`protocol.resolve_protocol`) from its source, every split untransformed (the stages attach the model's
    transforms, see `wildcapture.classifier.data_setup.attach_transforms`).

    With ``limit_per_split`` each split is cut to a seeded random subset after splitting, so a limited run's
    items are a subset of the full run's items of the same split. Raises DatasetError for any data problem
    (a missing folder, list or listed file names it), including an empty train_id, test_id or OOD set.
    `download` False: nothing is downloaded, whatever `data.download` and an OOD set's own `download` say (the
    checks); the data set's protocol is still the one declared.
    """
    cfg = resolve_data_cfg(data_cfg)
    protocol = resolve_protocol(cfg)
    if not download:
        cfg["download"] = False
    data = _BUILDERS[cfg["name"]](cfg)
    for spec in protocol.ood_sets:
        data.splits[spec.split] = source_of(spec).build(spec if download else _without_download(spec), cfg,
                                                        data.held_out)
    data.protocol = protocol
    for salt, name in enumerate(protocol.splits):
        data.splits[name] = limit_split(data.splits[name], cfg["limit_per_split"], cfg["seed"], salt)
    empty = [n for n in (TRAIN_ID, TEST_ID, *protocol.ood_splits) if len(data.splits[n]) == 0]
    if empty:
        raise DatasetError(f"data set {cfg['name']!r} has empty split(s) {empty}; check data.id_classes, "
                           "data.ood_classes, data.ood_sets and the fractions")
    return data
