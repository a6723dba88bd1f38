"""The shared entry point of the stage scripts: parse the config, run the stage, report errors plainly."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from wildcapture.config import Config, parse_stage_args
from wildcapture.errors import UserError

# Errors whose message already tells the user what to fix: shown without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def stage_main(config_dir: Path, description: str, run: Callable[[Config], Any],
               argv: Sequence[str] | None = None) -> None:
    """Parse the command line against `config_dir/config.yaml`, call `run(cfg)`, exit 2 on a user error."""
    try:
        run(parse_stage_args(config_dir, description, argv))
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
