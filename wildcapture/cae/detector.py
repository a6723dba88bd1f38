"""The CAE as an OOD detector (`wildcapture.ood.detector.Detector`): its score is the reconstruction error."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wildcapture.cae.architectures import check_fits, heatmap_prep
from wildcapture.cae.engine import reconstruction_errors
from wildcapture.cae.heatmap_data import HeatmapFile, prepare_heatmaps
from wildcapture.ood.detector import Detector


class CAEDetector(Detector):
    """Score = the CAE's squared reconstruction error of the image's prepared heatmap, averaged over its channels
    and pixels (higher = more OOD). Trained by stage 3, so `fit` has nothing to do.

    The raw heatmaps stay where they are; each batch is moved to `device`, resized to the CAE's input (an
    architecture that resizes) and normalised per image and channel there (`self.prep`, as in training).
    """

    name = "cae"
    inputs = ("heatmaps",)

    def __init__(self, model: nn.Module, resize: str, norm: str, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.prep = model, heatmap_prep(model, resize, norm)
        self.batch_size, self.device = batch_size, torch.device(device)

    def prepare(self, heatmaps: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return heatmaps (N, h, w) or (N, C, h, w) as the CAE's input (N, C, S, S) float32 on the CPU (for the
        gallery)."""
        return prepare_heatmaps(heatmaps, self.prep.size, self.prep.resize, self.prep.norm)

    def score(self, heatmaps: np.ndarray | torch.Tensor | HeatmapFile, source: str = "the heatmaps to score"
              ) -> np.ndarray:
        """Return the reconstruction error of each heatmap (N, h, w) or (N, C, h, w), float32 or float16 (a
        `HeatmapFile` is read a chunk at a time): float64 (N,).

        Raises DatasetError naming `source` if the heatmaps' channels (or, for an architecture at the native
        grid, grid) do not fit the model.
        """
        check_fits(self.model, self.prep, tuple(heatmaps.shape), source)
        self.model.to(self.device)
        source = heatmaps if isinstance(heatmaps, (HeatmapFile, torch.Tensor)) else torch.as_tensor(heatmaps)
        return reconstruction_errors(self.model, source, self.prep, self.batch_size, self.device)
