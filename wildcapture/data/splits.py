"""The split containers (`ImageSplit`, `DataSplits`) and the seeded splitting helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torchvision.transforms import functional as TF

from wildcapture.data.protocol import Protocol
from wildcapture.errors import DatasetError
from wildcapture.storage import write_csv


class ImageSplit(torch.utils.data.Dataset):
    """One split: per item a source string, an int64 label (-1 in an OOD set) and its true class name.

    ``loader`` maps a source to an RGB PIL image (see `images.FileImages`, `images.ArrayImages`);
    ``transform`` maps that image to a tensor (None: plain ToTensor, 3 x H x W in [0, 1]).
    """

    def __init__(self, sources: Sequence[str], labels: Sequence[int], class_names: Sequence[str],
                 loader: Callable[[str], Image.Image], transform: Optional[Callable] = None):
        if not len(sources) == len(labels) == len(class_names):
            raise ValueError("sources, labels and class_names must have the same length")
        self.sources: list[str] = list(sources)
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.class_names: list[str] = list(class_names)
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sources)

    def load_image(self, i: int) -> Image.Image:
        """Return item ``i`` as an untransformed RGB PIL image (crop applied)."""
        return self.loader(self.sources[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.load_image(i)
        x = self.transform(image) if self.transform is not None else TF.to_tensor(image)
        return x, int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> "ImageSplit":
        """Return a new split holding items ``indices`` (in that order), same loader and transform."""
        indices = [int(i) for i in indices]
        return ImageSplit([self.sources[i] for i in indices], self.labels[indices],
                          [self.class_names[i] for i in indices], self.loader, self.transform)


@dataclass
class DataSplits:
    """A data set: its ID class names, the classes it holds out, its protocol and a split per protocol split.

    A builder (`build._BUILDERS`) fills the ID splits and `held_out` (the held-out classes' images, or
    None); `build_splits` then adds one split per OOD set of `protocol`.
    """

    name: str
    id_class_names: list[str]
    ood_class_names: list[str]
    splits: dict[str, ImageSplit]
    held_out: ImageSplit | None = None
    protocol: Protocol | None = None

    def write_manifest(self, path: str | Path) -> None:
        """Write a CSV ``split,ood_set,source,label,class_name`` with one row per item of every split
        (`ood_set` empty for ID splits).

        Written to a temporary file and renamed, so a crash never leaves a half-written manifest.
        """
        protocol = self.protocol
        write_csv(Path(path), ["split", "ood_set", "source", "label", "class_name"],
                  ([name, protocol.set_name(name), source, int(label), class_name] for name in protocol.splits
                   for source, label, class_name in zip(self.splits[name].sources, self.splits[name].labels,
                                                        self.splits[name].class_names)))


def stratified_split(labels: Sequence[int], fraction: float, seed: int, class_names: Sequence[str],
                     what: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of items 0..N-1 with class ``labels`` into (kept, held out).

    The held-out part has ceil(fraction * N) items (sklearn's rule); both index arrays are sorted.
    ``class_names[label]`` names classes, ``what`` the items and ``key`` the config key in messages.
    Raises DatasetError when the split is impossible (too few items per class).
    """
    labels = np.asarray(labels, dtype=np.int64)
    everything = np.arange(len(labels))
    if fraction == 0:
        return everything, everything[:0]
    present, counts = np.unique(labels, return_counts=True)
    too_few = [class_names[c] for c, n in zip(present, counts) if n < 2]
    if too_few:
        raise DatasetError(f"cannot make a stratified {key} split of the {what}: class(es) {too_few} have "
                           "fewer than 2 items; add images or remove these classes")
    n_held = math.ceil(fraction * len(labels))
    n_keep = len(labels) - n_held
    if min(n_held, n_keep) < len(present):
        raise DatasetError(
            f"cannot make a stratified split of the {len(labels)} {what} with data.{key}={fraction}: it would "
            f"keep {n_keep} and hold out {n_held} items, but each part needs at least one item per class "
            f"({len(present)} classes); change data.{key} or add images")
    kept, held = train_test_split(everything, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(kept), np.sort(held)


def split_id_pool(labels: Sequence[int], test_fraction: float, val_fraction: float, seed: int,
                  class_names: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified (train, val, test) indices into ``labels``: test_fraction of all items goes to
    test, then val_fraction of the rest to val. Sorted index arrays."""
    rest, test = stratified_split(labels, test_fraction, seed, class_names, what, "test_fraction")
    rest_labels = np.asarray(labels)[rest]
    train, val = stratified_split(rest_labels, val_fraction, seed, class_names, what, "val_fraction")
    return rest[train], rest[val], test


def limit_split(split: ImageSplit, limit: int | None, seed: int, salt: int) -> ImageSplit:
    """Return a seeded random subset of at most ``limit`` items of ``split`` (original order kept).

    ``salt`` (e.g. the split's position in its protocol's splits) gives each split its own random stream.
    """
    if limit is None or len(split) <= limit:
        return split
    rng = np.random.default_rng([seed, salt])
    return split.subset(np.sort(rng.choice(len(split), size=limit, replace=False)))
