"""Which classifier size gives the best val_id accuracy in a fixed wall-clock budget of stage 1.

    python benchmarks/budget_search.py --benchmark cifar10_scratch --budget-min 45 plan data.root=data/real
    OMP_NUM_THREADS=1 python benchmarks/budget_search.py --benchmark cifar10_scratch run d128x6 d64x6 data.root=data/real
    python benchmarks/budget_search.py --benchmark cifar10_scratch summary data.root=data/real

plan times every candidate's epoch (one thread, two candidates side by side) and plans the most epochs that fit the budget; run trains the named
candidates' stage 1 as planned (two `run` processes of one thread each use both cores of a 2-core machine); summary
reads the finished runs and writes summary.md, ordered by val_id accuracy. Steps and files:
wildcapture/study/budget_search.py. Candidates: d128x6 (width 128, depth 6), d96x6, d64x6, d128x4. The folder is
results/<exp>/budget_search unless --out names one; key=value items as in reproduce.py, given to every step.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from wildcapture.errors import exit_on_user_error
from wildcapture.pipeline import BENCHMARKS


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="digits", choices=BENCHMARKS)
    parser.add_argument("--out", type=Path, default=None, help="search folder (default results/<exp>/budget_search)")
    parser.add_argument("--budget-min", type=float, default=45.0, help="stage 1's wall-clock budget (plan step)")
    parser.add_argument("--seed", type=int, default=0, help="stage 1's seed (run step)")
    parser.add_argument("step", choices=("plan", "run", "summary"))
    parser.add_argument("rest", nargs="*", metavar="key=value|candidate",
                        help="key=value items (any step); candidate names (plan: default all; run: required)")
    args = parser.parse_args(argv)
    items = [a for a in args.rest if "=" in a]
    names = [a for a in args.rest if "=" not in a]
    if args.budget_min <= 0:
        parser.error(f"--budget-min must be > 0, got {args.budget_min}")
    with exit_on_user_error():
        from wildcapture.paths import resolve_path
        from wildcapture.pipeline import stage_configs
        from wildcapture.study import budget_search as search

        root = args.out or resolve_path(f"results/{stage_configs(args.benchmark, extra=items)[0]['exp']}/budget_search")
        if args.step == "plan":
            search.plan(root, args.benchmark, items, search.pick_candidates(names or list(search.CANDIDATES)),
                        60 * args.budget_min)
        elif args.step == "run":
            if not names:
                parser.error("run needs candidate names")
            search.run(root, [c.name for c in search.pick_candidates(names)], args.seed)
        else:
            print(search.summarise(root)["markdown"])


if __name__ == "__main__":
    main()
