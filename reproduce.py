"""Reproduce a benchmark end to end: train the ViT, test it, train the CAE, print the OOD table.

    python reproduce.py                       # digits (offline; under a minute on a 2-core VM)
    python reproduce.py --benchmark cifar10   # the paper's setup (downloads CIFAR and ViT-B weights)
    python reproduce.py --smoke               # every stage on a few batches
    python reproduce.py device=cuda           # key=value applies to every stage that has the key
    python reproduce.py 1:train.epochs=4      # N:key=value to stage N alone (here the classifier, not the CAE)
"""
import argparse
from typing import Sequence

from wildcapture.errors import exit_on_user_error
from wildcapture.machine import machine_line
from wildcapture.cli import print_plan
from wildcapture.config import CHECK_HELP
from wildcapture.pipeline import BENCHMARKS, STAGES, check_pipeline, run_pipeline, stage_configs


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: the command line), run the pipeline (stage 4 prints the OOD table), print the timings
    and the machine (a single run's numbers are exact on one machine, not across CPU types)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="digits", choices=BENCHMARKS)
    parser.add_argument("--smoke", action="store_true", help="run every stage on a few batches (exp <benchmark>-smoke)")
    parser.add_argument("--check", action="store_true", help=CHECK_HELP)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a key in every stage that has it (N:key=value: in stage N only)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.check:
            configs = stage_configs(args.benchmark, args.smoke, args.overrides)
            print_plan(dict(zip((name for name, *_ in STAGES), configs)), check_pipeline(configs))
            return
        result = run_pipeline(args.benchmark, args.smoke, args.overrides)
        device = stage_configs(args.benchmark, args.smoke, args.overrides)[1].get("device", "auto")
        print(machine_line(device))
    print(", ".join(f"stage {name}: {s:.0f} s" for name, s in result["seconds"].items()))


if __name__ == "__main__":
    main()
