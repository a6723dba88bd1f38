"""Every path of an experiment, in one place, and repository-relative paths (portable checkpoints).

Layout of experiment EXP (each folder can be moved with its config key):

    weights/EXP/vit/        stage 1: best.pth, last.pth, config.yaml, log.jsonl, manifest.csv   (output_dir)
    data/heatmaps/EXP/      stage 2: heatmaps_meta.yaml, <split>/{heatmaps,logits,features}.npy,
                            <split>/index.csv                                                    (heatmaps_dir)
    results/EXP/            stage 2: classifier report, baseline_scores.csv, heatmap gallery;
                            stage 4: recon_errors.{pkl,csv}, ood_table.*, plots                  (results_dir)
    weights/EXP/cae/        stage 3: best.pth, last.pth, config.yaml, log.jsonl                  (output_dir)

Relative paths in configs resolve against the repository root, so scripts run from any folder.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DEFAULTS_FILE = Path(__file__).resolve().parent / "data" / "defaults.yaml"  # the `data:` config section

HEATMAPS_META = "heatmaps_meta.yaml"  # stage 2's completion marker and the heatmaps' provenance


def resolve_path(path: str | Path) -> Path:
    """Return `path` as an absolute Path; a relative path is taken against the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def portable_path(path: str | Path) -> str:
    """Return `path` relative to the repository root when it lies inside it (so a moved or cloned
    repository still finds it), else the absolute path; POSIX separators."""
    path = resolve_path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def classifier_dir(cfg: dict) -> Path:
    """Stage 1's output folder: `output_dir`, or `weights/<exp>/vit`."""
    return resolve_path(cfg["output_dir"] or f"weights/{cfg['exp']}/vit")


def classifier_checkpoint(cfg: dict) -> Path:
    """The classifier stage 2 tests: `checkpoint`, or stage 1's `weights/<exp>/vit/best.pth`."""
    return resolve_path(cfg["checkpoint"] or f"weights/{cfg['exp']}/vit/best.pth")


def heatmaps_dir(cfg: dict) -> Path:
    """Stage 2's per-split output folder: `heatmaps_dir`, or `data/heatmaps/<exp>`."""
    return resolve_path(cfg["heatmaps_dir"] or f"data/heatmaps/{cfg['exp']}")


def results_dir(cfg: dict) -> Path:
    """The folder for reports, tables and plots: `results_dir`, or `results/<exp>`."""
    return resolve_path(cfg["results_dir"] or f"results/{cfg['exp']}")


def cae_dir(cfg: dict) -> Path:
    """Stage 3's output folder: `output_dir`, or `weights/<exp>/cae`."""
    return resolve_path(cfg["output_dir"] or f"weights/{cfg['exp']}/cae")


def cae_checkpoint(cfg: dict) -> Path:
    """The CAE stage 4 scores with: `test.checkpoint`, or stage 3's `best.pth`."""
    return resolve_path(cfg["test"]["checkpoint"] or cae_dir(cfg) / "best.pth")


def baseline_scores_path(cfg: dict) -> Path:
    """Stage 2's per-image baseline scores read by stage 4: `test.baseline_scores`, or
    `<results_dir>/baseline_scores.csv`."""
    return resolve_path(cfg["test"]["baseline_scores"] or results_dir(cfg) / "baseline_scores.csv")
