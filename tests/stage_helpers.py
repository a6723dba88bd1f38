"""Tiny stage configs for fast end-to-end tests."""
from __future__ import annotations

from pathlib import Path

from wildcapture.config import Config, load_config
from wildcapture.paths import REPO_ROOT

TINY_VIT = ["model.img_size=8", "model.patch_size=2", "model.embed_dim=16", "model.depth=2", "model.num_heads=2",
            "data.limit_per_split=40", "train.batch_size=8", "train.eval_batch_size=16", "device=cpu"]


def stage1_config(out: Path, *overrides: str) -> Config:
    """Return a stage-1 config training a tiny ViT on 40 digits per split, writing to `out`."""
    return load_config(REPO_ROOT / "Train_Vit_Classifier" / "config", None,
                       [*TINY_VIT, f"output_dir={out}", *overrides])


# The stage tests below were written for the paper's heatmap and CAE (single-channel maps, 16x16 CAE); the
# digits defaults (cls_all + the small CAE) run end to end in test_pipeline and test_cae_multichannel_stages.
PAPER_HEATMAP = ["heatmap.kind=cls_last", "heatmap.dtype=float32"]  # float32: compared with attention recomputed
PAPER_CAE = ["cae.arch=paper"]


def stage2_config(checkpoint: Path, out: Path, *overrides: str) -> Config:
    """Return a stage-2 config reading `checkpoint` (the paper's heatmap kind), writing heatmaps and results under
    `out`."""
    return load_config(REPO_ROOT / "Test_Classifier" / "config", None,
                       [f"checkpoint={checkpoint}", f"heatmaps_dir={out / 'heatmaps'}",
                        f"results_dir={out / 'results'}", "device=cpu", "batch_size=16", "gallery_size=2",
                        "baselines.knn_k=5", *PAPER_HEATMAP, *overrides])

TINY_CAE = [*PAPER_CAE, "cae.paper.input_size=16", "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16",
            "test.batch_size=16", "test.gallery_size=2", "device=cpu"]


def cae_config(heatmaps_dir: Path, out: Path, *overrides: str) -> Config:
    """Return a stage-3/4 config: a 16x16 paper CAE on stage 2's `heatmaps_dir`, writing `out/cae` and `out/results`."""
    return load_config(REPO_ROOT / "AutoEncoder" / "config", None,
                       [*TINY_CAE, f"heatmaps_dir={heatmaps_dir}", f"output_dir={out / 'cae'}",
                        f"results_dir={out / 'results'}", *overrides])
