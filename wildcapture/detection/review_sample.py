"""The seeded sample of unflagged detections the review page shows for contrast.

Each item gets a pseudo-random key from (seed, item index) alone. An unflagged item is a candidate when its
key falls in the lowest ``oversample * size / n_items`` fraction of the key range, which `wants` tells as
the item streams past, so that the run writes thumbnails for candidates only. The sample is the ``size``
candidates with the smallest keys (fewer when fewer unflagged items are candidates). Nothing depends on the
order the items arrive in: a resumed run, or torchrun's shards merged (offer every shard's sample to one
`UnflaggedSample`), draw exactly the sample of one uninterrupted run. Memory: ``size`` values.
"""
from __future__ import annotations

import hashlib
import heapq
from typing import Generic, TypeVar

T = TypeVar("T")
KEY_RANGE = 1 << 64
OVERSAMPLE = 4.0


def sample_key(seed: int, item: int) -> int:
    """Return item ``item``'s sampling key under ``seed``: an integer in [0, 2**64), uniform, reproducible."""
    digest = hashlib.blake2b(f"{seed}:{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class UnflaggedSample(Generic[T]):
    """Keeps, of the candidates offered (`wants`), the ``size`` with the smallest `sample_key`, each once."""

    def __init__(self, size: int, seed: int, n_items: int, oversample: float = OVERSAMPLE):
        if size < 0 or n_items < 0 or oversample < 1:
            raise ValueError(f"need size >= 0, n_items >= 0, oversample >= 1; got {size}, {n_items}, {oversample}")
        self.size, self.seed = size, seed
        self.cutoff = round(KEY_RANGE * min(1.0, oversample * size / max(n_items, 1)))
        self._heap: list[tuple[int, int, T]] = []  # (-key, item, value): the largest kept key on top
        self._items: set[int] = set()

    def wants(self, item: int) -> bool:
        """Return True when unflagged item ``item`` is a candidate (write its thumbnails, then `offer` it)."""
        return sample_key(self.seed, item) < self.cutoff

    def offer(self, item: int, value: T) -> None:
        """Consider unflagged item ``item`` (carrying ``value``, e.g. its review card); non-candidates and
        items already offered are ignored."""
        key = sample_key(self.seed, item)
        if item in self._items or key >= self.cutoff:
            return
        entry = (-key, item, value)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif self._heap and entry[0] > self._heap[0][0]:
            self._items.discard(heapq.heapreplace(self._heap, entry)[1])
        else:
            return
        self._items.add(item)

    def values(self) -> list[T]:
        """Return the sampled values, in item order."""
        return [value for _, _, value in sorted(self._heap, key=lambda e: e[1])]
