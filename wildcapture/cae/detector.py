"""The CAE as an OOD detector with the same interface as the post-hoc baselines."""
from __future__ import annotations

import numpy as np
import torch

from torch import nn

from wildcapture.cae.architectures import check_fits, heatmap_prep
from wildcapture.cae.engine import reconstruction_errors
from wildcapture.cae.heatmap_data import HeatmapFile, prepare_heatmaps
from wildcapture.heatmap_store import SplitArrays
from wildcapture.ood.baselines import Detector


class CAEDetector(Detector):
    """Score = the CAE's mean squared reconstruction error of the image's heatmap (higher = more OOD).

    The raw heatmaps stay where they are; each batch is moved to `device`, resized to the CAE's input (the
    paper's CAE; the small one takes the native grid) and normalised per image and channel there
    (`self.prep`: `resize`, `norm`, as in training), so scoring keeps no copy of the prepared heatmaps.
    """

    name = "cae"

    def __init__(self, model: nn.Module, resize: str, norm: str, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.prep = model, heatmap_prep(model, resize, norm)
        self.batch_size, self.device = batch_size, torch.device(device)

    def prepare(self, heatmaps: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Return heatmaps (N, h, w) or (N, C, h, w) as the CAE's input (N, C, S, S) float32 on the CPU (for the
        gallery)."""
        return prepare_heatmaps(heatmaps, self.prep.size, self.prep.resize, self.prep.norm)

    def score_heatmaps(self, heatmaps: np.ndarray | torch.Tensor | HeatmapFile, source: str = "the heatmaps to score"
                       ) -> np.ndarray:
        """Return the reconstruction error of each heatmap (N, h, w) or (N, C, h, w), float32 or float16 (a
        `HeatmapFile` is read a chunk at a time): float64 (N,).

        Raises DatasetError naming `source` if the heatmaps' channels (or, for the small CAE, grid) do not fit
        the model.
        """
        check_fits(self.model, self.prep, tuple(heatmaps.shape), source)
        self.model.to(self.device)
        source = heatmaps if isinstance(heatmaps, (HeatmapFile, torch.Tensor)) else torch.as_tensor(heatmaps)
        return reconstruction_errors(self.model, source, self.prep, self.batch_size, self.device)

    def score_split(self, split: SplitArrays) -> np.ndarray:
        return self.score_heatmaps(split.heatmaps)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        raise TypeError("the CAE scores heatmaps: call score_split or score_heatmaps")
