"""Stages 3 and 4 at benchmark scale: epoch time and peak resident memory against the number of heatmaps.

    python benchmarks/bench_scale.py --sizes 5000 50000 [--model vit_base_patch16_224 --kind cls_all]
        [--dtype float16] [--root /tmp/wc_scale] [--epochs 1] [--n-eval 1000]

For each N, `make_synthetic_experiment.py` writes an experiment of N train_id maps (and --n-eval val_id,
test_id and test_ood maps) under --root; stage 3 (`cae.arch=small`, --epochs) and stage 4 then run, each in a
fresh process whose peak RSS (ru_maxrss) is reported, with the epoch time from stage 3's log.jsonl and the
size of the heatmaps on disk. The experiment is deleted afterwards (--keep keeps it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wildcapture.paths import REPO_ROOT

PEAK = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def run_measured(script: str, items: list[str]) -> tuple[float, float]:
    """Run REPO_ROOT/script with `items` in a fresh Python; returns (seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, str(REPO_ROOT / script), *items], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    if done.returncode:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK_KB")][-1]
    return time.perf_counter() - start, int(peak.split()[1]) / 1024


def measure(n: int, args: argparse.Namespace) -> dict[str, float]:
    """Make the experiment of `n` train_id maps, run stages 3 and 4; returns the figures of one row."""
    root = args.root / f"n{n}"
    shutil.rmtree(root, ignore_errors=True)
    dirs = [f"output_dir={root / 'vit'}", f"heatmaps_dir={root / 'heat'}", f"results_dir={root / 'stage2'}"]
    made, _ = run_measured("benchmarks/make_synthetic_experiment.py",
                           [f"exp=scale{n}", "--model", args.model, "--kind", args.kind, "--dtype", args.dtype,
                            "--n-train", str(n), *(f"--n-{s}={args.n_eval}" for s in ("val", "test", "ood")), *dirs])
    disk = sum(p.stat().st_size for p in (root / "heat").rglob("heatmaps.npy")) / 2**30
    cae = [f"exp=scale{n}", f"heatmaps_dir={root / 'heat'}", f"output_dir={root / 'cae'}",
           f"results_dir={root / 'stage4'}", f"test.baseline_scores={root / 'stage2' / 'baseline_scores.csv'}",
           "cae.arch=small", f"train.epochs={args.epochs}", "train.batch_size=64", "device=cpu",
           "test.gallery_size=0"]
    s3, rss3 = run_measured("AutoEncoder/train.py", cae)
    epochs = [json.loads(line) for line in (root / "cae" / "log.jsonl").read_text().splitlines()]
    s4, rss4 = run_measured("AutoEncoder/test_autoencoder.py", cae)
    if not args.keep:
        shutil.rmtree(root)
    return {"n": n, "disk_gib": disk, "make_s": made, "stage3_s": s3, "epoch_s": epochs[-1]["seconds"],
            "maps_per_s": n / epochs[-1]["seconds"], "stage3_peak_mib": rss3, "stage4_s": s4, "stage4_peak_mib": rss4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--kind", default="cls_all")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--n-eval", type=int, default=1000, help="val_id, test_id and test_ood maps each")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--root", type=Path, default=Path("/tmp/wc_scale"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(measure(n, args))
        print(json.dumps(rows[-1]), flush=True)
    print("| N | heatmaps on disk | stage 3 epoch | maps/s | stage 3 peak RSS | stage 4 | stage 4 peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['disk_gib']:.2f} GiB | {r['epoch_s']:.1f} s | {r['maps_per_s']:.0f} | "
              f"{r['stage3_peak_mib']:.0f} MiB | {r['stage4_s']:.0f} s | {r['stage4_peak_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
