"""Process set-up shared by the stages: seeding, device choice and torchrun (DDP) state."""
from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from wildcapture.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Return the RNG seed of one epoch: it depends on (seed, epoch) only, so resumed runs repeat it."""
    return seed * 100_003 + epoch


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """Return the torch device for `name` ('auto', 'cpu', 'cuda', 'cuda:N', 'mps'); 'cuda' means this
    process's GPU (`local_rank`).

    Raises ConfigError for another name, or for a device this machine does not have.
    """
    if not _DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"device '{name}' (config key device) is not valid; choose one of {DEVICE_CHOICES}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    instead = "use device=cpu or device=auto"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was asked for but CUDA is not available on this machine; {instead}")
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(f"device={name} asks for cuda:{device.index} but this machine has {count} CUDA "
                              f"device(s), cuda:0 to cuda:{count - 1}; {instead}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device=mps was asked for but MPS (Apple GPU) is not available on this machine; {instead}")
    return device


@dataclass(frozen=True)
class DistState:
    """Where this process stands in a torchrun job (world_size 1 when run plainly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistState, torch.device]:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA).

    Returns the process's DistState and its device.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistState(), pick_device(device_name)
    state = DistState(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    device = pick_device(device_name, state.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return state, device


def shard_indices(n_items: int, batch_size: int, state: DistState) -> list[int]:
    """Return the item indices of this process: every world_size-th batch of `batch_size` items, in order.

    Batches keep the boundaries of a single-process run, so each process computes exactly the batches
    that run would, and the per-item results match it.
    """
    n_batches = -(-n_items // batch_size)
    return [i for b in range(state.rank, n_batches, state.world_size)
            for i in range(b * batch_size, min((b + 1) * batch_size, n_items))]


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Return mixed-precision autocast on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Return the loss scaler `autocast_context` needs: enabled only for fp16 autocast (CUDA without bf16)."""
    return torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())
