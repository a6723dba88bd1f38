"""Cost of heatmap extraction versus a plain batched forward pass.

Times, on the same model and random data, (a) ``model(x)`` under ``torch.no_grad`` and
(b) ``forward_with_heatmaps(model, x, kind)`` for each kind; prints the median time per
batch and the ratio (b)/(a). Target: <= 1.10 for ``cls_last``.

    python benchmarks/bench_heatmaps.py                      # vit_tiny_patch16_224, CPU
    python benchmarks/bench_heatmaps.py --model vit_base_patch16_224 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any cwd

import timm  # noqa: E402
import torch  # noqa: E402

from wildcapture.heatmaps import HEATMAP_KINDS, forward_with_heatmaps  # noqa: E402


def _time(fn: Callable[[], object], device: torch.device, batches: int) -> float:
    """Mean seconds per batch over ``batches`` calls of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / batches


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm model name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=2, help="batches per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per method")
    p.add_argument("--kind", default="all", choices=("all",) + HEATMAP_KINDS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    args = p.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, img_size=args.img_size,
                              num_classes=10).to(device).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    kinds = HEATMAP_KINDS if args.kind == "all" else (args.kind,)
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16

    def run(fn: Callable[[], object]) -> Callable[[], object]:
        def wrapped():
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype,
                                                 enabled=args.amp):
                return fn()
        return wrapped

    methods = {"forward": run(lambda: model(x))}
    for k in kinds:
        methods[k] = run(lambda k=k: forward_with_heatmaps(model, x, kind=k))
    for fn in methods.values():
        for _ in range(args.warmup):
            fn()

    # interleave methods per repeat so drift in machine load hits all of them alike
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            samples[name].append(_time(fn, device, args.batches))
    times = {name: statistics.median(s) for name, s in samples.items()}

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"model={args.model} img={args.img_size} batch={args.batch_size} device={device} "
          f"threads={threads} amp={args.amp} batches/run={args.batches} "
          f"repeats={args.repeats} (median)")
    print(f"{'method':<12}{'s/batch':>10}{'img/s':>10}{'ratio':>8}")
    base = times["forward"]
    for name, t in times.items():
        print(f"{name:<12}{t:>10.4f}{args.batch_size / t:>10.1f}{t / base:>8.3f}")
    return times


if __name__ == "__main__":
    main()
