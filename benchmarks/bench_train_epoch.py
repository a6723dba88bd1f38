"""Time one stage-1 (classifier) training epoch through stage 1's own data path against the bare model compute.

epoch  : stage 1's loaders, built by the stage's own set-up (`train_classifier._benchmark_and_model`, `_loaders`:
         data, transforms, the image cache when `train.cache_images` takes it), then `train_one_epoch` over the
         first --batches batches (all by default), seeded as stage 1 seeds an epoch: data loading, augmentation
         and normalisation included
compute: the same number of forward + backward + optimizer steps of the same model, on the same batches already
         in memory (made by the loader once, before any timing): no data path at all
data   : the loader's batches alone, no model (robust to a busy CPU, where the compute's time moves a lot)
Prints the median of --repeats for each (epoch and compute alternate, so drift in the machine's load hits both
alike), their ratio (epoch / compute; 1.0 = the data path costs nothing), the set-up time (building the data and
the image cache, once per run), the warm-up (a compile's time with --compile), one validation pass over val_id,
the machine and torch's threads. `--json` prints one JSON object on stdout (the stage's own messages go to
stderr). The benchmark and key=value items are reproduce.py's: stage 1's config is
`pipeline.stage_configs(benchmark, False, items)[0]`.

    python benchmarks/bench_train_epoch.py --benchmark digits --json
    python benchmarks/bench_train_epoch.py --benchmark digits train.cache_images=false --json   # the per-image path
    python benchmarks/bench_train_epoch.py --benchmark digits model.img_size=32 --threads 1 --bf16 --compile
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import statistics
import sys
import time
from functools import partial
from typing import Any, Callable, Iterable, TextIO

import torch
import torch.nn.functional as F

import wildcapture.stages.train_classifier as stage1
from wildcapture.machine import machine_line
from wildcapture.pipeline import BENCHMARKS, stage_configs
from wildcapture.runtime import DistState, epoch_seed, grad_scaler, pick_device, seed_everything


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _describe(loader: Any) -> str:
    """What feeds the batches: the cached loader's own description, else the DataLoader's workers."""
    describe = getattr(loader, "describe", None)
    if callable(describe):
        return describe()
    return f"per-image DataLoader, {loader.num_workers} worker process(es)"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="digits", choices=BENCHMARKS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="as reproduce.py takes them")
    parser.add_argument("--batches", type=int, default=None, help="time the first N batches of the epoch (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="every timing under torch.autocast(bfloat16)")
    parser.add_argument("--compile", action="store_true", help="every timing on torch.compile(model) (compiled in "
                        "the warm-up, whose time is reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser.parse_args(argv)


class _Timed:
    """Stage 1's set-up for `args`, and the passes the benchmark times."""

    def __init__(self, args: argparse.Namespace, out: TextIO):
        self.args, self.cfg = args, stage_configs(args.benchmark, False, args.overrides)[0]
        stage1.check_config(self.cfg)
        self.device, self.seed, self.train_cfg = pick_device(self.cfg["device"]), self.cfg["seed"], self.cfg["train"]
        seed_everything(self.seed)
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):  # the stage's own messages (e.g. its data line) stay off the JSON
            self.bench, self.model, meta = stage1._benchmark_and_model(self.cfg, DistState(), self.device)
            self.train_loader, self.val_loader = stage1._loaders(self.cfg, self.bench, DistState(), self.device,
                                                                 meta["input_spec"])
        self.setup_s = time.perf_counter() - started
        self.initial = copy.deepcopy(self.model.state_dict())
        self.net = torch.compile(self.model) if args.compile else self.model
        self.amp = self.train_cfg["amp"] and self.device.type == "cuda"
        self.batches = [(images.to(self.device), labels.to(self.device)) for images, labels in self.epoch_batches()]

    def precision(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.args.bf16 else contextlib.nullcontext()

    def fresh(self) -> torch.optim.Optimizer:
        """The model back at its initial weights, and a new optimizer for it."""
        self.model.load_state_dict(self.initial)
        return stage1.build_optimizer(self.model.parameters(), self.train_cfg)

    def epoch_batches(self, epoch: int = 0) -> Iterable:
        """The train loader's batches of `epoch`, seeded as stage 1's `_train_epoch` seeds them."""
        torch.manual_seed(epoch_seed(self.seed, epoch))
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed(epoch_seed(self.seed, epoch))
        return itertools.islice(self.train_loader, self.args.batches) if self.args.batches else self.train_loader

    def epoch(self) -> None:
        optimizer = self.fresh()
        with self.precision():
            stage1.train_one_epoch(self.net, self.epoch_batches(), optimizer, grad_scaler(self.device, self.amp),
                                   self.device, 0, self.amp, self.train_cfg["grad_clip"], progress=False)

    def compute(self) -> None:
        optimizer = self.fresh()
        self.net.train()
        with self.precision():
            for images, labels in self.batches:
                loss = F.cross_entropy(self.net(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    def data_path(self) -> None:
        for _ in self.epoch_batches():
            pass

    def validate(self) -> None:
        with self.precision():
            stage1.evaluate(self.net, self.val_loader, self.device, self.amp, progress=False)


def _measure(timed: _Timed, repeats: int) -> dict[str, Any]:
    """Warm up, then time every pass (epoch and compute alternating); medians and samples in seconds."""
    seconds = partial(_seconds, device=timed.device)
    warmup_s = sum(seconds(fn) for fn in (timed.compute, timed.epoch, timed.validate))  # allocator, a compile
    epochs, computes = [], []
    for rep in range(repeats):
        if rep % 2:
            computes.append(seconds(timed.compute))
        epochs.append(seconds(timed.epoch))
        if not rep % 2:
            computes.append(seconds(timed.compute))
    data_s = statistics.median(seconds(timed.data_path) for _ in range(repeats))
    return {"epoch_s": statistics.median(epochs), "compute_s": statistics.median(computes), "data_s": data_s,
            "val_s": seconds(timed.validate), "warmup_s": warmup_s, "epoch_samples": epochs, "compute_samples": computes}


def _report(timed: _Timed, times: dict[str, Any], args: argparse.Namespace, out: TextIO) -> dict[str, Any]:
    images = sum(len(labels) for _, labels in timed.batches)
    epoch_s, compute_s, data_s = times["epoch_s"], times["compute_s"], times["data_s"]
    result = {
        "benchmark": args.benchmark, "overrides": args.overrides, "data_path": _describe(timed.train_loader),
        "ratio": round(epoch_s / compute_s, 4), **{k: round(v, 4) for k, v in times.items() if k.endswith("_s")},
        "setup_s": round(timed.setup_s, 3), "images": images, "batches": len(timed.batches),
        "batch_size": timed.train_cfg["batch_size"], "images_per_s": round(images / epoch_s, 1),
        "compute_images_per_s": round(images / compute_s, 1), "data_images_per_s": round(images / data_s, 1),
        "train_images": len(timed.bench.splits["train_id"]), "val_images": len(timed.bench.splits["val_id"]),
        "input_size": list(timed.model.patch_embed.img_size),
        "repeats": args.repeats, "epoch_samples": [round(s, 4) for s in times["epoch_samples"]],
        "compute_samples": [round(s, 4) for s in times["compute_samples"]], "threads": torch.get_num_threads(),
        "bf16": args.bf16, "compile": args.compile, "machine": machine_line(timed.cfg["device"]),
    }
    print(f"{args.benchmark} {' '.join(args.overrides)}: {images} images in {len(timed.batches)} batches of "
          f"{result['batch_size']}, input {'x'.join(map(str, result['input_size']))}; {result['data_path']}; "
          f"threads={result['threads']} bf16={args.bf16} compile={args.compile} repeats={args.repeats} (median)",
          file=out)
    print(f"epoch (stage 1's loader + train_one_epoch): {epoch_s:.3f} s  {images / epoch_s:.0f} img/s", file=out)
    print(f"bare compute (batches in memory):           {compute_s:.3f} s  {images / compute_s:.0f} img/s", file=out)
    print(f"data path alone (the loader's batches):     {data_s:.3f} s  {images / data_s:.0f} img/s "
          f"({100 * data_s / compute_s:.1f}% of the compute)", file=out)
    print(f"ratio epoch/compute: {epoch_s / compute_s:.3f}; set-up (data, cache) {timed.setup_s:.2f} s; warm-up (one "
          f"compute, epoch and validation pass; a compile) {times['warmup_s']:.2f} s; validation pass "
          f"{times['val_s']:.3f} s ({result['val_images']} images)", file=out)
    print(result["machine"], file=out)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = sys.stderr if args.json else sys.stdout
    timed = _Timed(args, out)
    result = _report(timed, _measure(timed, args.repeats), args, out)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
