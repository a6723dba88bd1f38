"""Cost of stage 2's pass (heatmaps + logits + features) versus a plain batched forward pass.

On the same model and the same in-memory data, times (a) a plain loop of ``model(x)`` over the
loader and (b) stage 2's ``infer_split`` (one forward pass per batch giving logits, pre-logits
features and heatmaps, copied to NumPy) for each heatmap kind; prints the median seconds per
pass and the ratio (b)/(a). Target: <= 1.05 for every CLS kind (``cls_last``, ``cls_heads``, ``cls_all``).
``--json`` prints only ``{kind: ratio}`` on stdout (the table goes to stderr).

    python benchmarks/bench_heatmaps.py                                   # vit_tiny_patch16_224, CPU
    python benchmarks/bench_heatmaps.py --model vit_small_patch16_224 --n 32 --batch-size 8 --json
    python benchmarks/bench_heatmaps.py --model vit_base_patch16_224 --device cuda --precision auto --n 2048
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from wildcapture.classifier.inference import infer_split
from wildcapture.attention import HEATMAP_KINDS
from wildcapture.runtime import PRECISIONS, pick_device, precision_context, resolve_precision


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="timm model name")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=64, help="images per pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per method; the median is reported")
    parser.add_argument("--kind", default="all", choices=("all", *HEATMAP_KINDS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", action="store_true", help="print only {kind: ratio} on stdout")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="as stage 2's heatmap.precision "
                        "(default fp32)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, img_size=args.img_size, num_classes=10).to(device).eval()
    data = TensorDataset(torch.randn(args.n, 3, args.img_size, args.img_size), torch.zeros(args.n, dtype=torch.long))
    loader = DataLoader(data, batch_size=args.batch_size, pin_memory=device.type == "cuda")

    @torch.inference_mode()
    def plain_forward() -> None:
        for images, _ in loader:
            with precision_context(device, precision):
                model(images.to(device, non_blocking=True)).float().cpu()

    methods = {"forward": plain_forward}
    for kind in HEATMAP_KINDS if args.kind == "all" else (args.kind,):
        methods[kind] = lambda kind=kind: infer_split(model, loader, args.n, kind, -1, device, precision, desc=kind)
    for fn in methods.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every method alike
        for name, fn in methods.items():
            samples[name].append(_seconds(fn, device))
    times = {name: statistics.median(s) for name, s in samples.items()}

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    out = sys.stderr if args.json else sys.stdout
    print(f"model={args.model} img={args.img_size} n={args.n} batch={args.batch_size} device={device} "
          f"threads={threads} precision={precision} repeats={args.repeats} (median)", file=out)
    print(f"{'method':<10}{'s/pass':>10}{'img/s':>10}{'ratio':>8}", file=out)
    for name, seconds in times.items():
        print(f"{name:<10}{seconds:>10.3f}{args.n / seconds:>10.1f}{seconds / times['forward']:>8.3f}", file=out)
    if args.json:
        print(json.dumps({name: round(t / times["forward"], 4) for name, t in times.items() if name != "forward"}))
    return times


if __name__ == "__main__":
    main()
