"""benchmarks/make_synthetic_experiment.py writes a stage-2 experiment that stages 3 and 4 run on unchanged."""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
from stage_helpers import cae_config

from wildcapture.heatmap_store import read_array, read_meta
from wildcapture.paths import REPO_ROOT
from wildcapture.stages import score_cae, train_cae


def _generator():
    spec = importlib.util.spec_from_file_location("make_synthetic_experiment",
                                                  REPO_ROOT / "benchmarks" / "make_synthetic_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_experiment_then_stages_3_and_4(tmp_path):
    folders = _generator().main(["exp=syn", "--model", "vit_tiny_patch16_224", "--kind", "cls_all", "--n-train", "24",
                                 "--n-val", "12", "--n-test", "10", "--n-ood", "10", f"output_dir={tmp_path / 'vit'}",
                                 f"heatmaps_dir={tmp_path / 'heat'}", f"results_dir={tmp_path / 'stage2'}"])
    meta = read_meta(folders["heatmaps"])
    maps = read_array(folders["heatmaps"], meta, "train_id", "heatmaps")
    assert maps.shape == (24, 36, 14, 14) and maps.dtype == np.float16  # vit_tiny: 12 blocks x 3 heads
    np.testing.assert_allclose(maps.astype(np.float32).sum((-2, -1)), 1.0, atol=2e-2)  # attention-like
    assert torch.load(tmp_path / "vit" / "best.pth", weights_only=True)["model_args"]["name"] == "vit_tiny_patch16_224"
    cfg = cae_config(tmp_path / "heat", tmp_path, "cae.arch=small", "train.epochs=1",
                     f"test.baseline_scores={tmp_path / 'stage2' / 'baseline_scores.csv'}")
    train_cae.run(cfg)
    result = score_cae.run(cfg)
    names = {row["detector"] for row in result["rows"]}
    assert {"cae", "cae+mahalanobis", "mahalanobis", "knn"} <= names
