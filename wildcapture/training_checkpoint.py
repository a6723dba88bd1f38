"""What the checkpoints of training stages 1 and 3 hold: one writer (`TrainingState.checkpoint`) and one
restorer (`TrainingState.restore`), as MAE's `misc.save_model` / `misc.load_model`.

A checkpoint is a dict: the stage's own entries (e.g. `model_args`, `val_acc`), `config` (the resolved
config), `model` (the state dict) and `epoch` (counted from 0). A resumable one (`last.pth`) adds the
state of the `optimizer`, of the `scheduler` (stages that have one) and of the fp16 loss `scaler`, so a
resumed run continues with the learning rate, moments and loss scale the interrupted one had reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

RESTORED = ("model", "optimizer", "scheduler", "scaler")  # the entries `restore` loads into objects
OWN = (*RESTORED, "config", "epoch")  # the entries every checkpoint holds whatever the stage


@dataclass
class TrainingState:
    """The objects whose state a training checkpoint carries. `model` is the bare model (not its
    DistributedDataParallel wrapper); `scheduler` and `scaler` are None where a stage has none."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None

    def checkpoint(self, epoch: int, config: dict[str, Any], extras: dict[str, Any],
                   resumable: bool = False) -> dict[str, Any]:
        """Return the checkpoint of the end of `epoch` (counted from 0): `extras` (the stage's own entries),
        `config`, `model` and `epoch`; with `resumable` also `optimizer`, `scheduler` (if any) and `scaler`
        (if any; {} when disabled: CPU, bf16 or amp off)."""
        saved = {**extras, "config": config, "model": self.model.state_dict(), "epoch": epoch}
        if resumable:
            saved["optimizer"] = self.optimizer.state_dict()
            if self.scheduler is not None:
                saved["scheduler"] = self.scheduler.state_dict()
            if self.scaler is not None:
                saved["scaler"] = self.scaler.state_dict()
        return saved

    def restore(self, checkpoint: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        """Load a resumable `checkpoint` into the model, optimizer, scheduler and scaler; returns (the epoch
        to train next, counted from 0; the checkpoint's extras as `checkpoint` took them). None (nothing
        to resume) restores nothing and returns (0, {}).

        A scaler saved disabled ({}, e.g. on the CPU) or not at all leaves this one as it is: there was
        no loss scale to continue. A scaler restored while disabled ignores the saved state.
        """
        if checkpoint is None:
            return 0, {}
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        return checkpoint["epoch"] + 1, {k: v for k, v in checkpoint.items() if k not in OWN}
