"""The images of a detection run as a Dataset whose items never raise: an unreadable file is a failure.

Each item is decoded with `fast_decode.load_rgb_at_least` (a JPEG at the smallest DCT scale that still
gives the model its input size for the crop), transformed like stage 2's eval images, and returned
as (image tensor, item index, failure reason). An unreadable item carries a zero tensor and
its reason, so one bad file costs one row, not the run, and DataLoader workers never raise.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from wildcapture.data.fast_decode import load_rgb_at_least
from wildcapture.errors import DatasetError
from wildcapture.detection.season import Item


class DetectionImages(Dataset):
    """Items -> (3 x H x W float tensor, index, failure reason or "")."""

    def __init__(self, items: Sequence[Item], transform: Callable, input_size: tuple[int, int], margin: float):
        self.items, self.transform = items, transform
        self.input_size, self.margin = input_size, margin

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        item = self.items[index]
        try:
            image = load_rgb_at_least(item.path, item.bbox, self.input_size, self.margin)
        except DatasetError as err:
            return torch.zeros(3, *self.input_size), index, str(err)
        return self.transform(image), index, ""
