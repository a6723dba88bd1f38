"""detect.py on season-sized MegaDetector files: peak memory and time as the number of images grows.

    python benchmarks/bench_season_memory.py [--images 20000 200000] [--scored 50]

Each file lists the same `--scored` images with one animal box each (generated 640x480 JPEGs, scored
through the digits-sized random detector of bench_detect.py), then empty images (``"detections": []``)
up to the count, as most of a camera-trap season is. Each count runs in a fresh `detect.py` process;
reported: its peak resident memory (MiB), its wall time, the growth between the first and the last
count, and the time per 100k empty images.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench_detect import make_detector  # benchmarks/ is the script's folder, so on sys.path

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_season(folder: Path, n_images: int, n_scored: int) -> Path:
    """Write `n_scored` JPEGs and a MegaDetector file of `n_images` images (the rest empty); returns its path."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n_scored):
        name = f"scored/{i:04d}.jpg"
        if not (folder / name).exists():
            (folder / "scored").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / name, quality=90)
        images.append({"file": name, "detections": [{"category": "1", "conf": 0.9, "bbox": [0.2, 0.2, 0.5, 0.5]}]})
    images += ({"file": f"empty/{i:07d}.jpg", "detections": []} for i in range(n_images - n_scored))
    path = folder / f"season{n_images}.json"
    path.write_text(json.dumps({"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
                                "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
                                "images": images}))
    return path


def run_detect(season: Path, cae: Path, out: Path) -> tuple[float, float]:
    """(peak resident MiB, wall seconds) of a fresh detect.py process on `season`."""
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    cmd = [sys.executable, "-c", code, str(REPO_ROOT / "detect.py"), str(season), "--cae", str(cae), "--out",
           str(out), "--device", "cpu", "--overwrite"]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    wall = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return int(result.stdout.split("PEAK")[-1]) / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--scored", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cae = make_detector(tmp, "digits", 32)
        measured = []
        for n in args.images:
            season = write_season(tmp, n, args.scored)
            mib, wall = run_detect(season, cae, tmp / f"out{n}" / "d.csv")
            measured.append((n, mib, wall))
            print(f"{n:>9,} images ({args.scored} scored, {season.stat().st_size / 2**20:.1f} MiB of JSON): "
                  f"peak {mib:.0f} MiB, {wall:.1f} s", flush=True)
        (n0, m0, w0), (n1, m1, w1) = measured[0], measured[-1]
        print(f"growth from {n0:,} to {n1:,} images: {m1 - m0:+.0f} MiB; "
              f"{(w1 - w0) / (n1 - n0) * 1e5:.1f} s per 100k empty images", flush=True)


if __name__ == "__main__":
    main()
