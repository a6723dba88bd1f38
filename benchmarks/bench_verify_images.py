"""Speed of the pre-training image check against a plain full decode of the same files.

Copies every JPEG of FRAMES (full camera-trap frames, e.g. the 2 of ``wildcapture_samples/frames``)
--copies times into a temporary folder, then times, once each and in this order:
(a) a plain full decode of every file in one process (``Image.open(path).load()``),
(b) `find_unreadable` with 1 worker (1/8-scale JPEG decode, this process),
(c) `find_unreadable` with every CPU this process may use.
Prints wall-clock seconds, files/s and the speed-up over (a), and the CPU milliseconds per file (robust to
other processes on the machine, which slow (c) most: the load average is printed too). Files are read
from the page cache (just written).

    python benchmarks/bench_verify_images.py /path/to/wildcapture_samples/frames --copies 200
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from wildcapture.data.images import FileImages
from wildcapture.data.splits import SPLITS, DataSplits, ImageSplit
from wildcapture.data.verify import find_unreadable
from wildcapture.runtime import available_cpus


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (pool workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """Return (wall-clock, CPU) seconds of one call of ``fn``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def _full_decode(paths: list[str]) -> None:
    for path in paths:
        with Image.open(path) as image:
            image.load()


def _check(bench: DataSplits, workers: int) -> None:
    bad = find_unreadable(bench, workers=workers, progress=False)
    if bad:
        raise RuntimeError(f"unexpected bad images: {bad[:3]}")


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Run the three timings; return (wall-clock, CPU) seconds per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", type=Path, help="folder of full-frame JPEGs to copy")
    parser.add_argument("--copies", type=int, default=200, help="copies of each frame")
    args = parser.parse_args(argv)

    frames = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not frames:
        parser.error(f"no .jpg files in {args.frames}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.copies):
            for frame in frames:
                paths.append(str(Path(tmp) / f"{i:05d}_{frame.name}"))
                shutil.copyfile(frame, paths[-1])
        splits = {name: ImageSplit([], [], [], FileImages()) for name in SPLITS}
        splits["train_id"] = ImageSplit(paths, [0] * len(paths), ["x"] * len(paths), FileImages())
        bench = DataSplits("bench", ["x"], [], splits)
        cpus = available_cpus()
        times = {"full decode, 1 process": _seconds(lambda: _full_decode(paths)),
                 "find_unreadable, 1 worker": _seconds(lambda: _check(bench, 1)),
                 f"find_unreadable, {cpus} workers": _seconds(lambda: _check(bench, cpus))}

    sizes = {Image.open(f).size for f in frames}
    print(f"{len(paths)} files ({len(frames)} frames x {args.copies}, sizes {sorted(sizes)}), {cpus} CPUs, one run, "
          f"1-min load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'method':<32}{'wall s':>8}{'files/s':>9}{'speed-up':>10}{'CPU ms/file':>13}")
    baseline = next(iter(times.values()))[0]
    for name, (wall, cpu) in times.items():
        print(f"{name:<32}{wall:>8.2f}{len(paths) / wall:>9.1f}{baseline / wall:>10.2f}{1000 * cpu / len(paths):>13.1f}")
    return times


if __name__ == "__main__":
    main()
