"""Time one CAE training epoch through the real data path against the bare model compute.

real : raw (N, [C,] grid, grid) heatmaps already on the device (stage 3 moves them once per run, in
       `training_source`) -> train_one_epoch (shuffled batches, gathered and resized (paper CAE) + normalised on
       the device by HeatmapPrep a chunk of batches at a time, then Adam steps), as stage 3 runs an epoch
model: the same number and sizes of forward + backward + Adam steps on a pre-made
       (N, C, S, S) tensor, in order: no preparation, no shuffling (S = size, or grid for --arch small).
Prints the median of --repeats for each and real/model (target <= 1.15), plus the data
path alone (shuffled batches + HeatmapPrep, no model), which is robust to a busy CPU, and
the bytes of heatmaps stage 3 keeps resident (raw) against preparing them all up front.

    python benchmarks/bench_cae_epoch.py --n 2000 --grid 14 --size 128 --batch-size 64
    python benchmarks/bench_cae_epoch.py --arch small --n 2000 --grid 14 --channels 12 --batch-size 64
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from wildcapture.cae.engine import train_one_epoch
from wildcapture.cae.heatmap_data import epoch_batches, HeatmapPrep, prepare_heatmaps
from torch import nn

from wildcapture.cae.architectures import ARCHITECTURES, cae_from_config, heatmap_prep


def _fresh(args: argparse.Namespace) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    cae_cfg = {"arch": args.arch, "paper": {"input_size": args.size, "zdim": args.zdim},
               "small": {"width": args.small_width, "zdim": args.small_zdim}}
    model = cae_from_config(cae_cfg, (args.channels, args.grid, args.grid)).to(args.device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_real(raw: torch.Tensor, prep: HeatmapPrep, args: argparse.Namespace) -> float:
    """Seconds for one shuffled train_one_epoch on the raw heatmaps (on the device)."""
    model, optimizer = _fresh(args)
    generator = torch.Generator().manual_seed(0)
    _sync(args.device)
    start = time.perf_counter()
    train_one_epoch(model, raw, prep, optimizer, args.batch_size, generator, args.device, progress=False)
    _sync(args.device)
    return time.perf_counter() - start


def time_model(x: torch.Tensor, args: argparse.Namespace) -> float:
    """Seconds for the same steps on a pre-made tensor, in order."""
    model, optimizer = _fresh(args)
    model.train()
    _sync(args.device)
    start = time.perf_counter()
    for i in range(0, x.shape[0], args.batch_size):
        batch = x[i:i + args.batch_size]
        loss = F.mse_loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(args.device)
    return time.perf_counter() - start


def time_data_path(raw: torch.Tensor, prep: HeatmapPrep, args: argparse.Namespace) -> float:
    """Seconds for the real path without the model: shuffled batches of the raw heatmaps (on the device),
    gathered and prepared a chunk at a time (`epoch_batches`)."""
    generator = torch.Generator().manual_seed(0)
    _sync(args.device)
    start = time.perf_counter()
    for _ in epoch_batches(raw, prep, args.batch_size, args.device, True, generator):
        pass
    _sync(args.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of heatmaps")
    parser.add_argument("--grid", type=int, default=14, help="heatmap side (14 for ViT-B/16 at 224)")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default="paper", help="CAE architecture (cae.arch)")
    parser.add_argument("--channels", type=int, default=1, help="heatmap channels (1: cls_last; heads or "
                        "blocks*heads for cls_heads/cls_all)")
    parser.add_argument("--size", type=int, default=128, help="paper CAE input side (the small one takes the grid)")
    parser.add_argument("--zdim", type=int, default=512, help="paper CAE code size")
    parser.add_argument("--small-width", type=int, default=32, help="small CAE conv channels")
    parser.add_argument("--small-zdim", type=int, default=8, help="small CAE bottleneck units")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    shape = (args.n, args.grid, args.grid) if args.channels == 1 else (args.n, args.channels, args.grid, args.grid)
    raw = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(args.device)
    model, _ = _fresh(args)
    prep = heatmap_prep(model, "bilinear", "max")
    premade = prepare_heatmaps(raw, prep.size).to(args.device)  # prepared on the CPU, then moved
    time_model(premade[: args.batch_size * 2], args)  # warm-up (allocator, kernels)

    real, bare = [], []
    for rep in range(args.repeats):  # alternate which goes first, so drift hits both alike
        if rep % 2:
            bare.append(time_model(premade, args))
        real.append(time_real(raw, prep, args))
        if not rep % 2:
            bare.append(time_model(premade, args))
    real_s, bare_s = statistics.median(real), statistics.median(bare)
    data_s = statistics.median(time_data_path(raw, prep, args) for _ in range(args.repeats))
    print(f"device={args.device} threads={torch.get_num_threads()} arch={args.arch} "
          f"parameters={sum(p.numel() for p in model.parameters()):,} n={args.n} channels={args.channels} "
          f"grid={args.grid} input={'x'.join(map(str, model.input_shape))} batch={args.batch_size} "
          f"repeats={args.repeats}")
    print(f"real epoch (raw heatmaps, per-batch prep):       {real_s:.3f} s  {args.n / real_s:.0f} img/s")
    print(f"model compute only (pre-made tensor):            {bare_s:.3f} s  {args.n / bare_s:.0f} img/s")
    print(f"data path alone (chunked gather + prep):         {data_s:.3f} s  "
          f"({100 * data_s / bare_s:.2f}% of model compute)")
    print(f"resident heatmaps: {raw.nbytes:,} bytes raw (N*C*h*w*4) vs {premade.nbytes:,} bytes "
          f"prepared up front (N*C*S*S*4)")
    print(f"ratio real/model: {real_s / bare_s:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
