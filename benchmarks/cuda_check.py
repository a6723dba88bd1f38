"""The CUDA paths of stages 1-4 on a GPU machine: mixed precision, pinned memory, finite results.

    python benchmarks/cuda_check.py                  # on a CUDA machine
    python benchmarks/cuda_check.py --device cpu     # a dry run of the script's own logic

Runs the digits pipeline in-process (experiment `--exp`, a few epochs) with `train.amp: true` (stages 1, 3)
and `heatmap.precision: auto` (stage 2), recording the output dtype of every Linear and Conv2d call: stages 1
and 2 must run the ViT in bf16 (fp16 where the GPU has no bf16) and stage 3 the CAE; stage 1 then runs again
with bf16 reported unsupported, to take the fp16 + GradScaler path. It checks stage 2's overlapped pass
against a forward pass per batch, the CAE epoch's overlapped loss read against a NaN batch, that stage 1/2 and
detect.py's loader (`make_loader`) gives pinned batches on CUDA and that every stage's numbers are finite. On
CUDA it also joins a one-process NCCL group (the most one GPU allows: NCCL refuses two ranks on one device,
and torchrun with one process runs the stages without a process group) and trains one epoch of the
DDP-wrapped ViT through the classifier's engine, whose sums are all-reduced over NCCL. One line per check;
exit status 1 if any failed. The images/s figures are separate commands (see `benchmarks/cuda_check.sh`).
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from wildcapture.attention import forward_with_heatmaps
from wildcapture.cae.architectures import cae_from_config
from wildcapture.cae.engine import train_one_epoch as train_cae_epoch
from wildcapture.cae.heatmap_data import HeatmapPrep
from wildcapture.classifier.engine import train_one_epoch
from wildcapture.classifier.inference import infer_split
from wildcapture.errors import NonFiniteLossError
from wildcapture.runtime import grad_scaler, make_loader, resolve_precision
from wildcapture.vit import build_vit
from wildcapture.pipeline import STAGES, stage_configs

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    """Print one PASS/FAIL line; remember failures for the exit status."""
    print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)


@contextmanager
def dtypes_seen() -> Iterator[Counter]:
    """Count (module type, output dtype) of every Linear/Conv2d/ConvTranspose2d forward call meanwhile."""
    seen: Counter = Counter()

    def hook(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and torch.is_tensor(output):
            seen[(type(module).__name__, str(output.dtype).replace("torch.", ""))] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def run_stage(index: int, cfg: dict[str, Any]) -> tuple[Any, Counter, float]:
    """Run stage `index` (0-3) of the pipeline on `cfg`; returns (its result, dtypes seen, seconds)."""
    module = importlib.import_module(STAGES[index][2])
    started = time.perf_counter()
    with dtypes_seen() as seen:
        result = module.run(cfg)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, seen, time.perf_counter() - started


def share(seen: Counter, module: str, dtype: str) -> float:
    """The fraction of `module` calls whose output had `dtype`."""
    total = sum(n for (m, _), n in seen.items() if m == module)
    return seen[(module, dtype)] / total if total else 0.0


def check_nccl(device: torch.device) -> None:
    """One epoch of the DDP-wrapped ViT over random data in a one-process NCCL group; checks the all-reduce."""
    with mock.patch.dict("os.environ", {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}):
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        total = torch.tensor([2.5], device=device)
        dist.all_reduce(total)
        torch.manual_seed(0)
        vit = build_vit({"name": "vit_tiny_patch16_224", "num_classes": 5, "kwargs": {"img_size": 32, "patch_size": 8}})
        model = DistributedDataParallel(vit.to(device), device_ids=[device.index])
        data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 5, (64,)))
        loader = make_loader(data, 16, None, 2, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        record = train_one_epoch(model, loader, optimizer, grad_scaler(device, True), device, 0, amp=True,
                                 progress=False)
        check("NCCL process group: all_reduce and one DDP epoch of the ViT under bf16/fp16",
              total.item() == 2.5 and dist.get_backend() == "nccl" and math.isfinite(record["train_loss"]),
              f"backend {dist.get_backend()}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, "
              f"train_loss {record['train_loss']:.4f}")
    finally:
        dist.destroy_process_group()


def check_overlap(device: torch.device) -> None:
    """Stage 2's overlapped pass (a batch's copies to pinned memory run while the next batch computes) against
    one forward pass per batch, and the CAE epoch's overlapped loss read stopping before a NaN batch's step."""
    torch.manual_seed(0)
    vit = build_vit({"name": "vit_tiny_patch16_224", "num_classes": 5, "kwargs": {"img_size": 32, "patch_size": 8}})
    vit = vit.to(device).eval()
    loader = make_loader(TensorDataset(torch.randn(40, 3, 32, 32), torch.zeros(40, dtype=torch.long)), 16, None, 2,
                         device)
    arrays = infer_split(vit, loader, 40, "cls_all", -1, device)
    with torch.inference_mode():
        plain = [forward_with_heatmaps(vit, images.to(device), "cls_all") for images, _ in loader]
    same = [np.array_equal(getattr(arrays, name), torch.cat([p[i] for p in plain]).float().cpu().numpy())
            for i, name in enumerate(("logits", "features", "heatmaps"))]
    check("stage 2's overlapped pass equals a forward pass per batch (logits, features, cls_all maps)", all(same),
          f"equal: {same}")

    model = cae_from_config({"arch": "small", "small": {"width": 8, "zdim": 4}}, (3, 6, 6)).to(device)
    maps = torch.rand(12, 3, 6, 6, device=device)
    maps[5, 0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    try:
        train_cae_epoch(model, maps, HeatmapPrep(None), torch.optim.Adam(model.parameters()), 12, None, device,
                        progress=False)
        stopped = False
    except NonFiniteLossError:
        stopped = True
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    check("the CAE epoch reads its loss while backward runs and stops before a NaN batch's step",
          stopped and unchanged, f"stopped {stopped}, weights unchanged {unchanged}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--exp", default="cuda-check")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(f"device {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
              f"bf16 {torch.cuda.is_bf16_supported()}", flush=True)
    half = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cuda else "float32"
    # stage 2's heatmap.precision auto also takes bf16 on a CPU with native bf16 (train.amp is CUDA only)
    dtypes = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    stage2 = dtypes[resolve_precision("auto", torch.device(args.device))]

    loader = make_loader(TensorDataset(torch.zeros(8, 3, 4, 4)), 4, None, 2, torch.device(args.device))
    (batch,) = next(iter(loader))
    check("make_loader pins memory on CUDA (stages 1-2, detect.py)", batch.is_pinned() == cuda,
          f"pin_memory={loader.pin_memory}, batch pinned={batch.is_pinned()}")

    check_overlap(torch.device(args.device))

    common = [f"device={args.device}", f"exp={args.exp}", f"train.epochs={args.epochs}",
              "heatmap.precision=auto", "train.amp=true"]
    configs = stage_configs("digits", extra=common)
    results = []
    for index, cfg in enumerate(configs):
        result, seen, seconds = run_stage(index, cfg)
        results.append(result)
        print(f"stage {STAGES[index][0]}: {seconds:.1f} s; outputs by dtype {dict(seen)}", flush=True)
        module = "Linear" if index < 2 else "Conv2d"
        if index < 3:
            want = stage2 if index == 1 else half
            check(f"stage {index + 1} runs its {module} layers in {want} under amp",
                  share(seen, module, want) > 0.5, f"{share(seen, module, want):.0%} of {module} calls")
    check("stage 1 val accuracy is finite", math.isfinite(results[0]["val_acc"]), f"{results[0]['val_acc']:.4f}")
    check("stage 2 test accuracy is finite", math.isfinite(results[1]["accuracy"]), f"{results[1]['accuracy']:.4f}")
    check("stage 3 best val loss is finite", math.isfinite(results[2]["best_val_loss"]),
          f"{results[2]['best_val_loss']:.4g}")
    aurocs = {row["detector"]: row["auroc"] for row in results[3]["rows"]}
    check("stage 4 AUROCs are finite", all(math.isfinite(v) for v in aurocs.values()),
          ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items()))

    if cuda:
        fp16 = stage_configs("digits", extra=[*common, f"exp={args.exp}-fp16"])[0]
        with mock.patch("torch.cuda.is_bf16_supported", return_value=False):
            result, seen, seconds = run_stage(0, fp16)
        check("stage 1 with fp16 + GradScaler (bf16 reported unsupported)",
              share(seen, "Linear", "float16") > 0.5 and math.isfinite(result["val_acc"]),
              f"{share(seen, 'Linear', 'float16'):.0%} of Linear calls in float16, val_acc {result['val_acc']:.4f}, "
              f"{seconds:.1f} s")
        check_nccl(torch.device("cuda:0"))
    print(f"{len(FAILED)} check(s) failed: {', '.join(FAILED)}" if FAILED else "all checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
