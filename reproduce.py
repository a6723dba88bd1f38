"""Reproduce a benchmark end to end: train the ViT, test it, train the CAE, print the OOD table.

    python reproduce.py                       # digits (offline, a few minutes on a laptop CPU)
    python reproduce.py --benchmark cifar10   # the paper's setup (downloads CIFAR and ViT-B weights)
    python reproduce.py --smoke               # every stage on a few batches
    python reproduce.py device=cuda           # key=value applies to every stage that has the key
"""
import argparse
import sys

from wildcapture.cli import USER_ERRORS
from wildcapture.pipeline import BENCHMARKS, run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="digits", choices=BENCHMARKS)
    parser.add_argument("--smoke", action="store_true", help="run every stage on a few batches (exp <benchmark>-smoke)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a key in every stage that has it")
    args = parser.parse_args()
    try:
        result = run_pipeline(args.benchmark, args.smoke, args.overrides)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    timings = ", ".join(f"stage {name}: {s:.0f} s" for name, s in result["seconds"].items())
    print(f"\n{result['markdown']}\n{timings}")


if __name__ == "__main__":
    main()
