"""Matching configured class names to the names a dataset has (folders, CIFAR label names)."""
from __future__ import annotations

import re
from typing import Sequence

from wildcapture.errors import DatasetError


def normalize_class_name(name: str | int) -> str:
    """Key for matching: lower case without spaces, underscores and hyphens ("Red_Deer" -> "reddeer")."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def match_classes(requested: Sequence[str | int], available: Sequence[str], what: str, key: str) -> list[str]:
    """Return, for each requested class, the one name of ``available`` it matches (see `normalize_class_name`).

    ``what`` names the dataset in messages (e.g. "folders in data/WildCapture"), ``key`` the config key.
    Raises DatasetError for a class with no match, listing what is available.
    """
    by_key: dict[str, list[str]] = {}
    for name in available:
        by_key.setdefault(normalize_class_name(name), []).append(name)
    matched = []
    for name in requested:
        hits = by_key.get(normalize_class_name(name), [])
        if not hits:
            raise DatasetError(
                f"class {str(name)!r} from data.{key} not found among the {what}; available: {sorted(available)}")
        if len(hits) > 1:
            raise DatasetError(f"class {str(name)!r} from data.{key} matches several of the {what}: {hits}; "
                               "rename one so names differ beyond case, spaces, '_' and '-'")
        matched.append(hits[0])
    return matched


def check_disjoint(id_names: Sequence[str], ood_names: Sequence[str]) -> None:
    """Raise DatasetError if a class is both ID and OOD (compared with `normalize_class_name`)."""
    both = sorted({normalize_class_name(n) for n in id_names} & {normalize_class_name(n) for n in ood_names})
    if both:
        raise DatasetError(f"class(es) {both} appear in both data.id_classes and data.ood_classes")
