"""The evaluation protocol: a data set's ID splits and its named OOD sets, as one declared object.

The one owner of split names and of OOD-ness: a split is OOD exactly when the protocol names it as the split
of one of its OOD sets (`Protocol.is_ood`); labels (-1 for OOD items) are not consulted. As in OpenOOD v1.5, ID
test is scored once and each OOD set on its own; each set belongs to a group: `near` and `far` are averaged
in the OOD table, `val` sets (e.g. OpenOOD's `val_tin`) are scored and reported apart, for choosing settings.

Declared by `data.ood_sets` (a list of `{name, group, source, ...}`; an empty list means the data set's
default, `default_ood_sets`), recorded in stage 2's metadata (`to_record` / `from_record`) and iterated by
stages 2-4, the OOD table and the seed study.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from wildcapture.errors import DatasetError

TRAIN_ID, VAL_ID, TEST_ID = "train_id", "val_id", "test_id"
ID_SPLITS = (TRAIN_ID, VAL_ID, TEST_ID)
FIT_SPLITS = (TRAIN_ID, VAL_ID)  # what a detector or the CAE learns from (and selects on)
GROUPS = ("near", "far", "val")
MEAN_GROUPS = ("near", "far")   # the groups the OOD table averages
HELDOUT = "heldout"             # the name of the data set's held-out classes as a set
_OOD_PREFIX = "ood_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
SET_KEYS = ("name", "group", "source")  # the keys every set has; its source adds its own


@dataclass(frozen=True)
class OODSet:
    """One OOD set: its `name`, `group` (one of GROUPS), `source` (a key of `ood_sources.OOD_SOURCES`) and the
    source's own `options` (sorted (key, value) pairs)."""

    name: str
    group: str
    source: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def split(self) -> str:
        """The split (folder under stage 2's heatmaps) that holds this set's items."""
        return _OOD_PREFIX + self.name

    def option(self, key: str, default: Any = None) -> Any:
        """The source option `key`, or `default` when the set does not give it."""
        return dict(self.options).get(key, default)

    def to_record(self) -> dict[str, Any]:
        """The set as the plain dict `data.ood_sets` takes."""
        return {"name": self.name, "group": self.group, "source": self.source, **dict(self.options)}


@dataclass(frozen=True)
class Protocol:
    """The ID splits (`ID_SPLITS`) and the OOD sets of one data set, in their declared order."""

    ood_sets: tuple[OODSet, ...]

    @property
    def ood_splits(self) -> tuple[str, ...]:
        """The OOD sets' splits, in order."""
        return tuple(s.split for s in self.ood_sets)

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split stage 2 writes: the ID splits, then one per OOD set."""
        return (*ID_SPLITS, *self.ood_splits)

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The splits stage 4 scores: test_id, then one per OOD set."""
        return (TEST_ID, *self.ood_splits)

    def is_ood(self, split: str) -> bool:
        """Whether `split` holds OOD items (one of this protocol's OOD sets); KeyError for an unknown split."""
        if split in ID_SPLITS:
            return False
        if split in self.ood_splits:
            return True
        raise KeyError(f"split {split!r} is not one of {', '.join(self.splits)}")

    def ood_set(self, split: str) -> OODSet:
        """The OOD set whose split is `split` (KeyError otherwise)."""
        for s in self.ood_sets:
            if s.split == split:
                return s
        raise KeyError(f"split {split!r} is not an OOD set's split ({', '.join(self.ood_splits)})")

    def set_name(self, split: str) -> str:
        """The OOD set name of `split`, or "" for an ID split."""
        return self.ood_set(split).name if self.is_ood(split) else ""

    def in_group(self, group: str) -> tuple[OODSet, ...]:
        """The sets of `group`, in order."""
        return tuple(s for s in self.ood_sets if s.group == group)

    def to_record(self) -> list[dict[str, Any]]:
        """The protocol as stage 2's metadata stores it: one dict per OOD set."""
        return [s.to_record() for s in self.ood_sets]

    @classmethod
    def from_record(cls, record: Iterable[dict[str, Any]], where: str = "data.ood_sets") -> "Protocol":
        """The protocol of a list of set dicts (`data.ood_sets` or stage 2's record), checked: names unique and
        plain, groups in GROUPS, at least one set. Source names and options are checked by `ood_sources`."""
        sets = []
        for i, spec in enumerate(record):
            if not isinstance(spec, dict):
                raise DatasetError(f"{where}[{i}] must be a mapping {{name, group, source, ...}}, got {spec!r}")
            missing = [k for k in SET_KEYS if k not in spec]
            if missing:
                raise DatasetError(f"{where}[{i}] lacks {', '.join(missing)}: each set needs name, group and source")
            name, group = spec["name"], spec["group"]
            if not isinstance(name, str) or not _NAME.match(name):
                raise DatasetError(f"{where}[{i}].name must be letters, digits, '_' or '-', got {name!r}")
            if group not in GROUPS:
                raise DatasetError(f"{where}[{i}] ({name}): group must be one of {', '.join(GROUPS)}, got {group!r}")
            options = tuple(sorted((k, v) for k, v in spec.items() if k not in SET_KEYS))
            sets.append(OODSet(name, group, str(spec["source"]), options))
        names = [s.name for s in sets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DatasetError(f"{where} names set(s) {twice} more than once; each set needs its own name")
        if not sets:
            raise DatasetError(f"{where} declares no OOD set")
        return cls(tuple(sets))


def held_out_set(group: str = "near") -> dict[str, Any]:
    """The data set's held-out classes as a set record."""
    return {"name": HELDOUT, "group": group, "source": "classes"}


CIFAR_CLASS_COUNT = {"cifar10": 10, "cifar100": 100}
_CIFAR_OTHER = {"cifar10": "cifar100", "cifar100": "cifar10"}


def has_held_out_classes(data_cfg: dict[str, Any]) -> bool:
    """Whether the data set of a resolved data config holds classes out of the ID classes as OOD images.

    digits, wildcapture and imagefolder always do (their `data.ood_classes`); a CIFAR data set does when
    `data.id_classes` names fewer than all of its classes (open-set recognition)."""
    name = data_cfg["name"]
    if name not in CIFAR_CLASS_COUNT:
        return True
    ids = data_cfg["id_classes"]
    return ids is not None and len(ids) < CIFAR_CLASS_COUNT[name]


def resolve_protocol(data_cfg: dict[str, Any]) -> Protocol:
    """The protocol a resolved data config declares.

    `data.ood_sets` empty: the data set's default, its held-out classes (a CIFAR data set: the other CIFAR's
    test set, plus its own held-out classes when `data.id_classes` names fewer). A list: those sets, plus, for a
    CIFAR data set with held-out classes and no `classes` set, one near set of them (`heldout`)."""
    declared: list[dict[str, Any]] = list(data_cfg.get("ood_sets") or [])
    name = data_cfg["name"]
    if not declared:
        if name in _CIFAR_OTHER:
            declared = [{"name": _CIFAR_OTHER[name], "group": "near", "source": _CIFAR_OTHER[name]}]
        else:
            return Protocol.from_record([held_out_set()])
    if (name in CIFAR_CLASS_COUNT and has_held_out_classes(data_cfg)
            and not any(s.get("source") == "classes" for s in declared if isinstance(s, dict))):
        declared = [*declared, held_out_set()]
    return Protocol.from_record(declared)
