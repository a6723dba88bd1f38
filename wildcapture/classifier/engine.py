"""The classifier's training and evaluation loops (one epoch each)."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wildcapture.errors import NonFiniteLossError
from wildcapture.runtime import autocast_context


def _reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over all DDP ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, epoch: int,
                    amp: bool = True, grad_clip: float | None = None, progress: bool = True) -> dict[str, float]:
    """Train `model` for one pass over `loader`.

    Returns {"train_loss": mean cross-entropy per image, "train_acc": fraction correct}, summed
    over every rank. Raises NonFiniteLossError on a NaN or infinite loss.
    """
    model.train()
    loss_sum, correct, count = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress)
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss_value}) at epoch {epoch}, step {step}: lower train.lr, "
                "enable train.grad_clip, or check the input data for NaN/inf values")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        batch = labels.shape[0]
        loss_sum += loss_value * batch
        correct += (logits.argmax(1) == labels).sum().item()
        count += batch
        bar.set_postfix(loss=f"{loss_sum / count:.4f}")
    loss_sum, correct, count = _reduce_sums([loss_sum, correct, count], device)
    return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = True,
             progress: bool = True, desc: str = "val") -> dict[str, float]:
    """Return {"val_loss": mean cross-entropy per image, "val_acc": fraction correct} over `loader`
    (summed over every rank)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.shape[0]
    loss_sum, correct, count = _reduce_sums([loss_sum, correct, count], device)
    return {"val_loss": loss_sum / max(count, 1), "val_acc": correct / max(count, 1)}
