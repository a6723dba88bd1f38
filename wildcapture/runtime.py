"""Process set-up shared by the stages: seeding, CPUs and DataLoaders, device choice, torchrun (DDP) state and
precision."""
from __future__ import annotations

import contextlib
import functools
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from wildcapture.errors import ConfigError

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Return the RNG seed of one epoch: it depends on (seed, epoch) only, so resumed runs repeat it."""
    return seed * 100_003 + epoch


def available_cpus() -> int:
    """Return how many CPUs this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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


# Stage 2, detect.py and the seed study's inference take one of these; `resolve_precision` applies the rule.
PRECISIONS = ("auto", "fp32", "bf16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch reports it.

    Torch's probes are private (`torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`): a probe
    that is missing or fails counts as "no", so a torch without them falls back to fp32, never to an
    emulated bf16 that would be slower than fp32.
    """
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 - a private probe may change or raise; it only decides a speed-up
            continue
    return False


def resolve_precision(setting: str, device: torch.device) -> str:
    """Return the precision inference runs in on `device` for `setting` (one of PRECISIONS): 'fp32',
    'bf16' or 'fp16'.

    auto: bf16 on CUDA with bf16, fp16 on older CUDA, bf16 on CPUs with native bf16 (`cpu_has_native_bf16`),
    fp32 elsewhere (other CPUs, MPS). fp32 is always fp32; bf16 is bf16 on CUDA with bf16 and on any CPU (emulated,
    slower than fp32, where the CPU lacks it). Raises ConfigError for another setting, or bf16 where it cannot run.
    """
    if setting not in PRECISIONS:
        raise ConfigError(f"precision '{setting}' is not valid; choose one of {', '.join(PRECISIONS)}")
    if setting == "fp32":
        return "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        if setting == "bf16":
            raise ConfigError(f"precision bf16 was asked for but {device} has no bf16; use precision auto (fp16 "
                              "there) or fp32")
        return "fp16"
    if device.type == "cpu":
        return "bf16" if setting == "bf16" or cpu_has_native_bf16() else "fp32"
    if setting == "bf16":
        raise ConfigError(f"precision bf16 runs on cpu and cuda, not on {device}; use precision auto or fp32")
    return "fp32"


def heatmap_precision(provenance: dict[str, Any]) -> str | None:
    """Return the precision (fp32, bf16, fp16) the heatmaps of a stage-2 meta or CAE provenance were made in.

    Metas older than `heatmap.precision` recorded `amp`: false meant fp32; true meant mixed precision on CUDA
    and fp32 on the CPU, and the device was not recorded, so it reads as None (unknown).
    """
    heat = provenance.get("heatmap") or {}
    if "precision" in heat:
        return heat["precision"]
    return "fp32" if heat.get("amp") is False else None


def describe_precision(setting: str, precision: str, device: torch.device) -> str:
    """Return e.g. 'precision bf16 (auto on cpu with native bf16)', for a run's first line."""
    if setting != "auto":
        slow = device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16()
        return f"precision {precision} (asked for{'; no native bf16 on this CPU: emulated, slower than fp32' if slow else ''})"
    why = {"cpu": "with native bf16" if precision == "bf16" else "without native bf16"}.get(device.type, "")
    return f"precision {precision} (auto on {device.type}{' ' + why if why else ''})"


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return autocast to `precision` ('bf16' or 'fp16', from `resolve_precision`) on `device`; a no-op for 'fp32'.

    Outputs of an autocast region may be bf16/fp16: cast them to float32 before storing or scoring them.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Training's mixed precision (`train.amp`): autocast on CUDA (bf16 where supported, else fp16, as
    `resolve_precision` picks); a no-op elsewhere: training on the CPU stays in fp32."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return precision_context(device, resolve_precision("auto", device))


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Return the loss scaler `autocast_context` needs: enabled only for fp16 autocast (CUDA without bf16)."""
    return torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())


def to_host_later(*tensors: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
    """Start copying `tensors` (all on one device) to float32 CPU tensors; return a function that gives them (on
    CUDA it waits for these copies only, not for work queued after them, so the GPU stays busy while the host
    waits)."""
    if not tensors or tensors[0].device.type != "cuda":
        done = tuple(t.detach().to("cpu", torch.float32) for t in tensors)
        return lambda: done
    host = tuple(torch.empty(t.shape, dtype=torch.float32, pin_memory=True) for t in tensors)
    copied = torch.cuda.Event()
    with torch.cuda.device(tensors[0].device):  # the copies and the event on that device's stream, not cuda:0's
        for target, t in zip(host, tensors):
            target.copy_(t.detach().float(), non_blocking=True)  # cast on the GPU, then an asynchronous copy
        copied.record()

    def wait() -> tuple[torch.Tensor, ...]:
        copied.synchronize()
        return host
    return wait


def one_behind(items: Iterable[T]) -> Iterator[T]:
    """Yield `items` in order, each once the next one has been produced (the last at the end)."""
    previous, started = None, False
    for item in items:
        if started:
            yield previous
        previous, started = item, True
    if started:
        yield previous


@functools.cache
def _note_capped_workers(asked: int, used: int) -> None:
    """Print, once per (asked, used) pair, that fewer worker processes than asked are used."""
    print(f"note: num_workers={asked} capped at the {used} CPUs available to this process", flush=True)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None, num_workers: int,
                device: torch.device, collate_fn: Callable | None = None) -> DataLoader:
    """Return an in-order DataLoader (or in `sampler`'s order) with pinned memory on CUDA; its
    `generator` seeds the worker RNGs (stage 1 reseeds it every epoch). `collate_fn`: None, torch's default.

    It uses at most one worker process per CPU available to this process (a note says so once).
    """
    workers = min(num_workers, available_cpus())
    if workers < num_workers:
        _note_capped_workers(num_workers, workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                      collate_fn=collate_fn)
