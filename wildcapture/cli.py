"""What the command-line entry points share: run a stage from its command line, and turn an error the user
can fix into one line on stderr and exit status 2 instead of a traceback.

This module does not import torch: the stage's library module is imported only after the arguments
parse, so `--help` and argument errors answer at once.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from wildcapture.config import parse_stage_args
from wildcapture.errors import exit_on_user_error

def stage_main(config_dir: Path, doc: str, module: str, argv: Sequence[str] | None = None) -> None:
    """Parse the command line against `config_dir/config.yaml`, then import `module` (a dotted name) and
    call its `run(cfg)`; exit 2 with one line on stderr on an error the user can fix.

    `doc` is the script's docstring, shown by `--help`.
    """
    with exit_on_user_error():
        cfg = parse_stage_args(config_dir, doc, argv)
        importlib.import_module(module).run(cfg)
