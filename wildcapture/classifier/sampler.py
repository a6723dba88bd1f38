"""One sampler for every training set-up: shuffled or class-balanced, single process or DDP."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from wildcapture.runtime import epoch_seed


def class_balanced_weights(labels: np.ndarray) -> torch.Tensor:
    """Return per-item sampling weights 1/count(class), so every class is drawn equally often."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    return torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)


class EpochSampler(Sampler[int]):
    """Indices for one epoch, derived only from (seed, epoch), then sliced for this rank.

    shuffle: a random permutation; balanced: `len(labels)` class-balanced draws with replacement;
    neither: the dataset order. With several ranks a training epoch is padded (by wrapping) to a
    multiple of world_size so every rank takes the same number of steps; an evaluation epoch
    (`pad=False`) is split without duplicates. Call `set_epoch` before each epoch; the order does
    not depend on any other RNG state, which makes resumed runs identical to uninterrupted ones.
    """

    def __init__(self, labels: np.ndarray, *, shuffle: bool, balanced: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.num_items = len(labels)
        self.weights = class_balanced_weights(labels) if balanced else None
        self.shuffle, self.seed, self.rank, self.world_size, self.pad = shuffle, seed, rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_items, replacement=True, generator=generator).tolist()
        if self.shuffle:
            return torch.randperm(self.num_items, generator=generator).tolist()
        return list(range(self.num_items))

    def __iter__(self) -> Iterator[int]:
        indices = self._epoch_indices()
        if self.pad and self.world_size > 1:
            total = math.ceil(len(indices) / self.world_size) * self.world_size
            indices = (indices * math.ceil(total / max(len(indices), 1)))[:total]
        return iter(indices[self.rank::self.world_size])

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.num_items / self.world_size)
        return len(range(self.rank, self.num_items, self.world_size))
