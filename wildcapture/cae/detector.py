"""The CAE as an OOD detector with the same interface as the post-hoc baselines."""
from __future__ import annotations

import numpy as np
import torch

from wildcapture.cae.engine import reconstruction_errors
from wildcapture.cae.heatmap_data import prepare_heatmaps
from wildcapture.cae.model import ConvAutoencoder
from wildcapture.heatmap_store import SplitArrays
from wildcapture.ood.baselines import Detector


class CAEDetector(Detector):
    """Score = the CAE's mean squared reconstruction error of the image's heatmap (higher = more OOD).

    The heatmaps are resized to the CAE's input and normalised per image (`resize`, `norm`, as in
    training) one chunk at a time, so scoring needs no copy of every prepared heatmap.
    """

    name = "cae"

    def __init__(self, model: ConvAutoencoder, resize: str, norm: str, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.resize, self.norm = model, resize, norm
        self.batch_size, self.device = batch_size, torch.device(device)

    def prepare(self, heatmaps: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return heatmaps (N, h, w) as the CAE's input (N, 1, S, S) float32 on the CPU."""
        return prepare_heatmaps(heatmaps, self.model.input_size, self.resize, self.norm)

    def score_heatmaps(self, heatmaps: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return the reconstruction error of each heatmap (N, h, w): float64 (N,)."""
        self.model.to(self.device)
        chunk = self.batch_size * max(1, 4096 // self.batch_size)  # whole batches: same errors as one pass
        errors = [reconstruction_errors(self.model, self.prepare(heatmaps[i:i + chunk]), self.batch_size, self.device)
                  for i in range(0, len(heatmaps), chunk)]
        return np.concatenate(errors) if errors else np.zeros(0, dtype=np.float64)

    def score_split(self, split: SplitArrays) -> np.ndarray:
        return self.score_heatmaps(split.heatmaps)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        raise TypeError("the CAE scores heatmaps: call score_split or score_heatmaps")
