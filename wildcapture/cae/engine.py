"""The CAE at work: a training epoch, reconstruction errors and the detector they make (`CAEDetector`: the
error is the OOD score), its OOD threshold and the unknown confidence."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wildcapture.cae.architectures import check_fits, heatmap_prep
from wildcapture.cae.heatmap_data import HeatmapFile, HeatmapPrep, RawHeatmaps, epoch_batches, prepare_heatmaps
from wildcapture.detector import Detector
from wildcapture.errors import NonFiniteLossError
from wildcapture.runtime import autocast_context, to_host_later


def train_one_epoch(
    model: nn.Module,
    heatmaps: RawHeatmaps,
    prep: HeatmapPrep,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: Optional[torch.Generator],
    device: torch.device | str,
    progress: bool = True,
    epoch: Optional[int] = None,
    amp: bool = False,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> float:
    """Train one pass over the shuffled raw heatmaps (N, h, w) or (N, C, h, w) with the MSE reconstruction loss.

    `heatmaps`: a tensor (anywhere) or a `HeatmapFile` (a stage-2 `.npy`, float32 or float16). Batches are
    gathered and prepared by `prep` into the CAE's input (B, C, S, S) on `device`, a chunk of batches at a time
    (`epoch_batches`); shuffling is one `torch.randperm(N, generator=generator)`.
    With `amp` on CUDA the forward pass runs under `autocast_context` (bf16, or fp16 with `scaler`, from
    `runtime.grad_scaler`); the loss is computed in float32.
    Returns the epoch's mean training MSE per pixel and channel (batch losses weighted by batch size).
    Raises NonFiniteLossError (a RuntimeError) on a non-finite loss, before the optimizer step (the weights are
    untouched; that step's gradients are not). On CUDA the host waits for each step's loss while the GPU runs
    the backward pass, rather than for the whole step.
    """
    model.train()
    total, seen = 0.0, 0
    n_steps = math.ceil(heatmaps.shape[0] / batch_size)
    batches = epoch_batches(heatmaps, prep, batch_size, device, shuffle=True, generator=generator)
    desc = "train" if epoch is None else f"train epoch {epoch}"
    for step, (_, batch) in enumerate(tqdm(batches, total=n_steps, desc=desc, disable=not progress, leave=False)):
        with autocast_context(torch.device(device), amp):
            recon = model(batch)
        loss = F.mse_loss(recon.float(), batch)
        read_loss = to_host_later(loss)
        optimizer.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        loss_value = float(read_loss()[0])  # on CUDA, the backward pass runs meanwhile
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"non-finite loss ({loss_value}) in CAE training at epoch {epoch}, step {step}: "
                                     "lower train.lr or check the heatmaps for NaN/inf values")
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        total += loss_value * batch.shape[0]
        seen += batch.shape[0]
    if seen == 0:
        raise ValueError("train_one_epoch got no training heatmaps")
    return total / seen


def _outputs(model: nn.Module, heatmaps: RawHeatmaps, prep: HeatmapPrep, batch_size: int,
             device: torch.device | str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (prepared batch, reconstruction), both (B, C, S, S) on `device`, for the raw heatmaps (N, h, w) or
    (N, C, h, w) in order, in eval mode without grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _, batch in epoch_batches(heatmaps, prep, batch_size, device, shuffle=False):
                yield batch, model(batch)
    finally:
        model.train(was_training)


def reconstruction_errors(model: nn.Module, heatmaps: RawHeatmaps, prep: HeatmapPrep, batch_size: int,
                          device: torch.device | str) -> np.ndarray:
    """Return each image's mean squared reconstruction error, shape (N,) float64.

    heatmaps: raw (N, h, w) or (N, C, h, w), a tensor or `HeatmapFile`, prepared per batch on `device` by
    `prep` into x (B, C, S, S).
    The error of image i is the mean over its channels and pixels of (model(x)_i - x_i)^2, so it does not
    depend on batch_size (up to the convolution's float rounding).
    """
    errors = [
        ((recon.double() - batch.double()) ** 2).mean(dim=(1, 2, 3)).cpu()
        for batch, recon in _outputs(model, heatmaps, prep, batch_size, device)
    ]
    return torch.cat(errors).numpy() if errors else np.zeros(0, dtype=np.float64)


def reconstruct(model: nn.Module, heatmaps: torch.Tensor, prep: HeatmapPrep, batch_size: int,
                device: torch.device | str) -> torch.Tensor:
    """Return the reconstructions of the raw heatmaps (N, h, w) or (N, C, h, w), prepared per batch by `prep`:
    float32 (N, C, S, S) on the CPU."""
    outs = [recon.float().cpu() for _, recon in _outputs(model, heatmaps, prep, batch_size, device)]
    return torch.cat(outs) if outs else torch.empty(0, *prep.output_shape(heatmaps.shape))


def ood_threshold(val_errors: np.ndarray, accept_fraction: float = 0.95) -> float:
    """Return the smallest error threshold that accepts at least accept_fraction of val_errors.

    An image is accepted as ID when its error <= threshold. This is the
    `accept_fraction` quantile with numpy's "inverted_cdf" rule: the k-th smallest error,
    k = ceil(accept_fraction * N). E.g. errors 1..20 and 0.95 give 19 (19 of 20 accepted);
    numpy's "higher" rule would give 20 and accept all 20.
    """
    errors = np.asarray(val_errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("ood_threshold needs at least one validation error")
    if not np.isfinite(errors).all():
        raise ValueError("ood_threshold got NaN or infinite validation errors")
    if not 0.0 < accept_fraction <= 1.0:
        raise ValueError(f"accept_fraction must be in (0, 1], got {accept_fraction}")
    # round first: 0.95 * 20 is 19.000000000000004 in some float paths
    k = max(1, math.ceil(round(accept_fraction * errors.size, 9)))
    return float(np.partition(errors, k - 1)[k - 1])


def unknown_confidence(sorted_val_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return, for each score, the fraction of the val_id scores (sorted ascending) strictly below it:
    float64 (N,) in [0, 1], non-decreasing in the score. The threshold of `ood_threshold` maps to about
    `accept_fraction`, a flagged score to at least that, and a score above every val_id score to 1.0."""
    reference = np.asarray(sorted_val_scores, dtype=np.float64)
    if reference.size == 0:
        raise ValueError("unknown_confidence needs at least one val_id score")
    return np.searchsorted(reference, np.asarray(scores, dtype=np.float64), side="left") / reference.size


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
