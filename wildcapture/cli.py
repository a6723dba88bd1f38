"""What the command-line entry points share: run a stage from its command line, and turn an error the user
can fix into one line on stderr and exit status 2 instead of a traceback.

This module does not import torch: the stage's library module is imported only after the arguments
parse, so `--help` and argument errors answer at once.
"""
from __future__ import annotations

import importlib
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from wildcapture.config import parse_stage_args
from wildcapture.errors import exit_on_user_error

def stage_main(config_dir: Path, doc: str, module: str, argv: Sequence[str] | None = None) -> None:
    """Parse the command line against `config_dir/config.yaml`, then import `module` (a dotted name) and
    call its `run(cfg)`, or with `--check` its `check(cfg)` (which writes nothing) and print the plan; exit 2
    with one line on stderr on an error the user can fix.

    `doc` is the script's docstring, shown by `--help`.
    """
    with exit_on_user_error():
        cfg, check = parse_stage_args(config_dir, doc, argv)
        stage = importlib.import_module(module)
        if check:
            print_plan({"": cfg}, stage.check(cfg))
        else:
            stage.run(cfg)


def print_plan(configs: Mapping[str, dict[str, Any]], writes: Iterable[Path]) -> None:
    """Print what `--check` found: each resolved config (YAML, headed by its name: "" for a script's one), the
    files the run would write, and that nothing was written."""
    for name, cfg in configs.items():
        print(f"resolved config{f' of stage {name}' if name else ''}:")
        print(textwrap.indent(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None), "  "), end="")
    print("the run would write:")
    for path in writes:
        print(f"  {path}")
    print("check passed; nothing was written")
