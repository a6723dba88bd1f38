"""Shared pytest fixtures: one tiny stage-1 run reused by the stage-2/3/4 tests."""
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).parent))  # tests/stage_helpers.py

from stage_helpers import stage1_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vit_checkpoint(tmp_path_factory) -> Path:
    """Path of best.pth from a 2-epoch stage-1 run of a tiny ViT on 40 digits per split."""
    from wildcapture.stages.train_classifier import run

    out = tmp_path_factory.mktemp("stage1")
    run(stage1_config(out, "train.epochs=2"))
    return out / "best.pth"
