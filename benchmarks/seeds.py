"""Results over stage-1 seeds: the whole pipeline for N seeds and each heatmap/CAE variant, summarised.

    python benchmarks/seeds.py --seeds 5                                  # digits, the default variants
    python benchmarks/seeds.py --seeds 3 --variants cls_last/paper rollout/paper --bootstrap 2000
    python benchmarks/seeds.py --seeds 5 exp=digits-79 "data.id_classes=[7,9]"   # another split
    python benchmarks/seeds.py --seeds 5 --out results/digits/seeds_f16 --classifiers results/digits/seeds  # reuse stage 1
    python benchmarks/seeds.py --seeds 2 --only 0 & python benchmarks/seeds.py --seeds 2 --only 1; wait
    python benchmarks/seeds.py --seeds 2 --summary-only                   # one process per seed, then the summary

Seeds 0..N-1 seed stage 1 (and each CAE); the data split (data.seed) stays the same, so every run scores
the same test images. key=value items apply to every stage that has the key, as in reproduce.py. Writes
<out>/summary.json and <out>/summary.md (default out: results/<exp>/seeds; the runs go to <out>/runs/,
layout in wildcapture/study/seed_runs.py) and redoes every run when run again (--summary-only: no run, only the
summary, from the runs already there). Prints the table and the time of each stage run. Variants:
wildcapture/study/variants.py. Each variant's CAE is reported alone and fused with every storable partner
(wildcapture/study/partner_fusion.py); where the OOD sets include a `val` one, also fused with the partner and
weight each run chooses on it (`cae+val-chosen`, wildcapture/study/fusion_weight.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from wildcapture.cli import print_plan
from wildcapture.config import CHECK_HELP
from wildcapture.errors import exit_on_user_error
from wildcapture.pipeline import BENCHMARKS
from wildcapture.study.variants import DEFAULT_VARIANTS, VARIANTS, pick_variants


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default: the command line), run the study, print the table and timings; returns
    `run_study`'s result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="number of stage-1 seeds (0..N-1)")
    parser.add_argument("--benchmark", default="digits", choices=BENCHMARKS)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME",
                        help=f"heatmap/CAE variants, from: {', '.join(v.name for v in VARIANTS)}")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="study folder (default results/<exp>/seeds)")
    parser.add_argument("--classifiers", type=Path, default=None, metavar="STUDY",
                        help="reuse the stage-1 classifiers of another study's folder (same seeds) instead of training")
    parser.add_argument("--summary-only", action="store_true",
                        help="run no stage: rebuild the summary from the runs already in the study folder")
    parser.add_argument("--only", type=int, nargs="+", default=None, metavar="SEED",
                        help="run only these seeds' stages and write no summary (processes sharing --out, one per "
                             "core, then --summary-only)")
    parser.add_argument("--check", action="store_true", help=CHECK_HELP)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a key in every stage that has it (N:key=value: in stage N only)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    with exit_on_user_error():
        picked = pick_variants(args.variants)
        from wildcapture.study.seed_runs import check_study, run_study  # imports torch: after the arguments parse

        if args.check:
            print_plan(*check_study(args.benchmark, range(args.seeds), picked, args.overrides, args.out,
                                    args.bootstrap, args.classifiers, args.only))
            return {}
        result = run_study(args.benchmark, range(args.seeds), picked, args.overrides, args.out, args.bootstrap,
                           args.bootstrap_seed, args.classifiers, args.summary_only, args.only)
    if args.only is not None:
        for t in result["timings"]:
            print(f"seed {t['seed']}, {t['step']}: {t['seconds']:.1f} s")
        print(f"ran seeds {args.only}; once every seed has run, --summary-only writes the summary")
        return result
    print(result["markdown"])
    for t in result["timings"]:
        print(f"seed {t['seed']}, {t['step']}: {t['seconds']:.1f} s")
    print(f"total {sum(t['seconds'] for t in result['timings']):.0f} s; wrote {result['paths']['md']} and "
          f"{result['paths']['json']}")
    return result


if __name__ == "__main__":
    main()
