"""detect.py on real camera-trap frames: images/s at each precision and against a plain full decode, the decode
share, peak memory.

    python benchmarks/bench_detect.py path/to/frames [--n 200] [--memory 300 3000]
    python benchmarks/bench_detect.py FRAMES --skip-digits --memory --n 64 --repeats 2   # ViT-B/16: fp32 vs auto
    python benchmarks/bench_detect.py FRAMES --device cuda --workers 12 --batch-size 128 --skip-digits --memory

The frames are hard-linked N times into a temporary folder. The detectors are randomly initialised
(speed and memory do not depend on the weights) and written in the project's checkpoint formats:
- digits: the default stage-1 ViT (16x16 input, 4x4 heatmaps) with the default 32x32 CAE;
- vitb: `vit_base_patch16_224` (224x224, 14x14 heatmaps) with the paper's 128x128 CAE;
- the memory runs: the digits ViT with a `--cae-size` CAE (default 128, the paper's).
Reported in one run: (1) a plain full decode + resize of every file to the model input, one process;
(2) `detect()` on the same files, whole images, one process, at each `--precisions` (default fp32 and auto:
what auto chose on this machine is printed first, with the CPU and torch), the runs interleaved `--repeats`
times and the fastest kept, and the speed-up of each over the first; the ratio to (1); (3) for vitb, the decode
share: the time of `load_rgb_at_least` + transform alone over the time of detect; (4) the peak resident
memory of `detect.py` (a fresh process each) on `--memory` image counts.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from wildcapture.cae.architectures import ConvAutoencoder
from wildcapture.cae.checkpoint import CAE_FORMAT
from wildcapture.config import load_config
from wildcapture.data.config import data_identity
from wildcapture.data.images import load_rgb
from wildcapture.data.transforms import build_transforms
from wildcapture.data.images import load_rgb_at_least
from wildcapture.detection import DECODES
from wildcapture.detection.run import DetectOptions, default_workers, detect
from wildcapture.machine import cpu_name
from wildcapture.paths import REPO_ROOT
from wildcapture.provenance import classifier_identity
from wildcapture.runtime import PRECISIONS, cpu_has_native_bf16, pick_device, resolve_precision
from wildcapture.storage import save_checkpoint, sha256_file
from wildcapture.vit import build_vit, model_args_from_config

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def make_detector(folder: Path, kind: str, cae_size: int) -> Path:
    """Write a random classifier and a CAE checkpoint naming it into `folder`; returns the CAE's path."""
    if kind == "digits":
        cfg = load_config(REPO_ROOT / "Train_Vit_Classifier" / "config")
        model_args = model_args_from_config(cfg["model"], num_classes=5)
    else:
        model_args = {"name": "vit_base_patch16_224", "num_classes": 7, "kwargs": {}}
    torch.manual_seed(0)
    model = build_vit(model_args)
    size = list(model.patch_embed.img_size)
    spec = {"input_size": size, "mean": IMAGENET[0], "std": IMAGENET[1], "interpolation": "bilinear"}
    names = [str(i) for i in range(model_args["num_classes"])]
    vit_path = folder / f"{kind}_vit.pth"
    save_checkpoint({"model": model.state_dict(), "model_args": model_args, "class_names": names,
                     "input_spec": spec, "format": "wildcapture-vit-1"}, vit_path)
    digest = sha256_file(vit_path)
    cae = ConvAutoencoder(cae_size, 512)
    provenance = {"run_id": "bench", "classifier": classifier_identity(vit_path, digest, model_args, names),
                  "input_spec": spec, "heatmap": {"kind": "cls_last", "block": -1},
                  "data": data_identity({"name": "imagefolder"}), "heatmap_files": {}}
    cae_path = folder / f"{kind}_cae.pth"
    save_checkpoint({"format": CAE_FORMAT, "model_args": cae.constructor_args(), "prep": {"resize": "bilinear",
                     "norm": "max"}, "heatmaps": provenance, "model": cae.state_dict(), "threshold": 0.01,
                     "val_scores": torch.tensor([0.0, 0.01], dtype=torch.float64)},
                    cae_path)
    return cae_path


def link_frames(frames: Path, target: Path, n: int) -> list[Path]:
    """Hard-link the frames into `target` until it holds `n` images; returns their paths."""
    target.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = []
    for i in range(n):
        path = target / f"{i:06d}{sources[i % len(sources)].suffix}"
        os.link(sources[i % len(sources)], path)
        paths.append(path)
    return paths


def seconds(work) -> tuple[float, float]:
    """(wall, CPU) seconds of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_decode(paths: list[Path], size: list[int]) -> None:
    """A full decode + the model's eval transform of every file: the baseline a naive loader pays."""
    _, eval_tf = build_transforms({}, size, *IMAGENET, "bilinear")
    for path in paths:
        eval_tf(load_rgb(path))


def fast_decode(paths: list[Path], size: list[int]) -> None:
    """detect.py's decode alone: `load_rgb_at_least` + the eval transform of every file."""
    _, eval_tf = build_transforms({}, size, *IMAGENET, "bilinear")
    for path in paths:
        eval_tf(load_rgb_at_least(path, None, tuple(size)))


def peak_memory(folder: Path, cae: Path, out: Path) -> float:
    """Peak resident memory (MiB) of a fresh `detect.py` process scoring `folder`."""
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    cmd = [sys.executable, "-c", code, str(REPO_ROOT / "detect.py"), str(folder), "--cae", str(cae), "--out", str(out),
           "--device", "cpu", "--overwrite"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return int(result.stdout.split("PEAK")[-1]) / 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", type=Path, help="folder of camera-trap frames (JPEGs)")
    parser.add_argument("--n", type=int, default=200, help="images in the speed runs")
    parser.add_argument("--cae-size", type=int, default=128)
    parser.add_argument("--memory", type=int, nargs="*", default=[300, 3000], help="image counts of the memory runs")
    parser.add_argument("--skip-vitb", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--device", default="cpu", help="detect's device: cpu, cuda, ... (the plain decode runs on the CPU)")
    parser.add_argument("--workers", type=int, default=None, help="detect's decoding processes (--workers; default "
                        "detect's own: the CPUs but one)")
    parser.add_argument("--html", action="store_true", help="also write the review page (its images for every "
                        "flagged detection; the random detectors flag every image)")
    parser.add_argument("--batch-size", type=int, default=64, help="detect's --batch-size")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=PRECISIONS,
                        help="detect's --precision values to time (default: fp32 auto)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed runs per precision; the fastest "
                        "is reported")
    parser.add_argument("--decode", default="cpu", choices=DECODES, help="detect's --decode (gpu: nvJPEG on CUDA)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the plain and fast decode timings (one "
                        "CPU process each: minutes for thousands of 2048 px frames)")
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="after the timed runs, one more run of "
                        "the first precision under cProfile; print its K functions of most cumulative time (where "
                        "the main process waits: the loader, a device sync, the rows)")
    return parser


def print_profile(work: Callable[[], object], top: int) -> None:
    """Run `work` under cProfile and print its `top` functions by cumulative time."""
    profile = cProfile.Profile()
    profile.runcall(work)
    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(top)


def main() -> None:
    args = _parser().parse_args()
    options = {p: DetectOptions(device=args.device, overwrite=True, workers=args.workers, batch_size=args.batch_size,
                                precision=p, html=args.html, decode=args.decode) for p in args.precisions}
    device = pick_device(args.device)
    chosen = {p: resolve_precision(p, device) for p in args.precisions}
    print(f"CPU {cpu_name()}, native bf16 {cpu_has_native_bf16()} (AVX512-BF16 or AMX, as torch reports), torch "
          f"{torch.__version__}, torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}; on {device}: "
          + ", ".join(f"{p} -> {c}" for p, c in chosen.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = link_frames(args.frames, tmp / "images", args.n)
        kinds = (*(() if args.skip_digits else ("digits",)), *(() if args.skip_vitb else ("vitb",)))
        for kind in kinds:
            cae = make_detector(tmp, kind, 32 if kind == "digits" else 128)
            size = [16, 16] if kind == "digits" else [224, 224]
            plain = (1.0, 0.0) if args.no_baselines else seconds(lambda: plain_decode(paths, size))
            decode = (1.0, 0.0) if args.no_baselines else seconds(lambda: fast_decode(paths, size))
            if args.device != "cpu":  # warm-up: CUDA context, kernels and the allocator, outside the timing
                for p in args.precisions:
                    detect(tmp / "images", cae, tmp / f"{kind}.csv", options[p])
            runs: dict[str, tuple[float, float]] = {}
            for _ in range(args.repeats):  # interleaved, so drift in machine load hits every precision alike
                for p in args.precisions:
                    timed = seconds(lambda: detect(tmp / "images", cae, tmp / f"{kind}.csv", options[p]))
                    runs[p] = min(runs.get(p, timed), timed)
            n, first = len(paths), args.precisions[0]
            for p, run in runs.items():
                workers = default_workers() if args.workers is None else args.workers
                print(f"{kind} on {args.device}, decode {args.decode}, precision {p} ({chosen[p]}), {workers} decoding workers, batch "
                      f"{args.batch_size}: detect {n / run[0]:.2f} img/s ({1000 * run[1] / n:.1f} CPU ms/img), "
                      f"{runs[first][0] / run[0]:.2f}x {first}'s speed", flush=True)
            run = runs[first]
            if args.profile:
                print(f"{kind}: where detect's main process spends its time, {first}:", flush=True)
                print_profile(lambda: detect(tmp / "images", cae, tmp / f"{kind}.csv", options[first]), args.profile)
            if args.no_baselines:
                continue
            print(f"{kind}: plain full decode + resize {n / plain[0]:.1f} img/s ({1000 * plain[1] / n:.1f} CPU ms/img); "
                  f"detect at {first} is {plain[0] / run[0]:.2f}x the plain decode's speed; its decode alone "
                  f"{n / decode[0]:.1f} img/s = {decode[0] / run[0]:.0%} of detect's time at {first}", flush=True)
        cae = make_detector(tmp, "digits", args.cae_size)
        for count in args.memory:
            folder = tmp / f"memory{count}"
            link_frames(args.frames, folder, count)
            mib = peak_memory(folder, cae, tmp / f"memory{count}.csv")
            print(f"peak memory of detect.py (digits ViT, {args.cae_size}x{args.cae_size} CAE) on {count} images: "
                  f"{mib:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
