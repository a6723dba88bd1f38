"""Speed of reduced-scale JPEG decoding (`data.images.load_rgb_at_least`) against a full decode, for a model's input.

Copies every JPEG of FRAMES (full camera-trap frames, e.g. the 2 of ``wildcapture_samples/frames``)
--copies times into a temporary folder, then times, in one process on one torch thread, once each and in
this order, image file -> normalised model input tensor (the eval transform of `build_transforms`, bicubic):
full decode (`images.load_rgb`) vs `load_rgb_at_least`, for a 224 px input (ViT-B/16) and a 16 px input
(the digits model), on the whole frame or on --box (normalised x y w h, as MegaDetector's).
Prints images/s, CPU ms/image (robust to other processes on the machine) and the speed-up over the full
decode for the same input size (wall-clock and CPU), then the mean |difference| between the fast and full
model inputs of each frame. Files are read from the page cache (just written).

    python benchmarks/bench_decode.py /path/to/wildcapture_samples/frames --copies 100
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from wildcapture.data.images import load_rgb
from wildcapture.data.transforms import build_transforms
from wildcapture.data.images import Box, load_rgb_at_least
from wildcapture.megadetector import pixel_box

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZES = (224, 16)  # ViT-B/16 and the digits model


def _full_decode(path: Path, box: Box | None) -> Image.Image:
    """The reference: decode in full, then crop ``box`` with the same pixel rule as `load_rgb_at_least`."""
    image = load_rgb(path)
    return image if box is None else image.crop(pixel_box(box, image.size))


def _seconds(fn: Callable[[Path], object], paths: list[Path]) -> tuple[float, float]:
    """Return (wall-clock, CPU) seconds of ``fn`` over ``paths``, after one untimed warm-up call."""
    fn(paths[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        fn(path)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Run the timings; return (wall-clock, CPU) seconds per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", type=Path, help="folder of full-frame JPEGs to copy")
    parser.add_argument("--copies", type=int, default=100, help="copies of each frame")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"),
                        help="normalised crop box (default: the whole frame)")
    args = parser.parse_args(argv)
    box = None if args.box is None else tuple(args.box)
    torch.set_num_threads(1)  # as in a DataLoader worker: one core per image

    frames = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not frames:
        parser.error(f"no .jpg files in {args.frames}")
    load_rgb_at_least(frames[0], box, 1)  # a DatasetError now if --box lies outside the frame
    transforms = {size: build_transforms({}, (size, size), IMAGENET_MEAN, IMAGENET_STD)[1] for size in SIZES}
    times: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.copies):
            for frame in frames:
                paths.append(Path(tmp) / f"{i:05d}_{frame.name}")
                shutil.copyfile(frame, paths[-1])
        for size, transform in transforms.items():
            times[f"{size} px: full decode"] = _seconds(lambda p: transform(_full_decode(p, box)), paths)
            times[f"{size} px: load_rgb_at_least"] = _seconds(
                lambda p: transform(load_rgb_at_least(p, box, size)), paths)

    sizes = sorted({Image.open(f).size for f in frames})
    print(f"{len(paths)} files ({len(frames)} frames x {args.copies}, sizes {sizes}), box {box}, one process, "
          f"1 torch thread, one run; 1-min load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'method':<30}{'wall s':>8}{'images/s':>10}{'CPU ms/image':>14}{'speed-up wall':>15}{'speed-up CPU':>14}")
    for name, (wall, cpu) in times.items():
        base_wall, base_cpu = times[name.split(":")[0] + ": full decode"]
        print(f"{name:<30}{wall:>8.2f}{len(paths) / wall:>10.1f}{1000 * cpu / len(paths):>14.1f}"
              f"{base_wall / wall:>15.2f}{base_cpu / cpu:>14.2f}")

    print("mean |fast - full| of the normalised model input (ImageNet mean/std), per frame:")
    for frame in frames:
        diffs = [(transform(load_rgb_at_least(frame, box, size)) - transform(_full_decode(frame, box))).abs().mean()
                 for size, transform in transforms.items()]
        print(f"  {frame.name}: " + ", ".join(f"{size} px {d:.4f}" for size, d in zip(SIZES, diffs)))
    return times


if __name__ == "__main__":
    main()
