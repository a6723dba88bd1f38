"""Repository-relative paths, so every stage script runs from any working directory."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_path(path: str | Path) -> Path:
    """Return `path` as an absolute Path; a relative path is taken against the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def heatmaps_dir(cfg: dict) -> Path:
    """Return stage 2's per-split output folder: `heatmaps_dir`, or `data/heatmaps/<exp>` when null."""
    return resolve_path(cfg["heatmaps_dir"] or f"data/heatmaps/{cfg['exp']}")


def results_dir(cfg: dict) -> Path:
    """Return the folder for reports, tables and plots: `results_dir`, or `results/<exp>` when null."""
    return resolve_path(cfg["results_dir"] or f"results/{cfg['exp']}")
