"""Shared pytest fixtures: one tiny stage-1 run reused by the stage-2/3/4 tests."""
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread is fastest, and immune to CPU oversubscription
sys.path.insert(0, str(Path(__file__).parent))  # tests/stage_helpers.py

from stage_helpers import stage1_config  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def cpu_without_native_bf16():
    """Every test runs as on a CPU without native bf16, whatever this machine has: precision `auto` means fp32 on
    the CPU, as the tests' fp32 reference values need (tests/test_precision.py sets the probe itself). Subprocess
    runs are not patched: tests comparing one with an in-process run set precision fp32."""
    import wildcapture.runtime

    with pytest.MonkeyPatch.context() as patch:  # session-wide: the shared stage runs below are made under it
        patch.setattr(wildcapture.runtime, "cpu_has_native_bf16", lambda: False)
        yield


@pytest.fixture(scope="session")
def tiny_vit_checkpoint(tmp_path_factory) -> Path:
    """Path of best.pth from a 2-epoch stage-1 run of a tiny ViT on 40 digits per split."""
    from wildcapture.stages.train_classifier import run

    out = tmp_path_factory.mktemp("stage1")
    run(stage1_config(out, "train.epochs=2"))
    return out / "best.pth"


@pytest.fixture(scope="session")
def tiny_heatmaps(tiny_vit_checkpoint, tmp_path_factory) -> Path:
    """Folder of one stage-2 run on `tiny_vit_checkpoint`: `heatmaps/` (40 per split, 4x4) and `results/`.

    Shared by the stage-3/4 and detect tests: treat it as read-only.
    """
    from stage_helpers import stage2_config
    from wildcapture.stages.evaluate_classifier import run

    out = tmp_path_factory.mktemp("stage2")
    run(stage2_config(tiny_vit_checkpoint, out))
    return out


@pytest.fixture(scope="session")
def tiny_cae(tiny_heatmaps, tmp_path_factory) -> Path:
    """Folder of one uninterrupted 3-epoch stage-3 run (16x16 CAE) on `tiny_heatmaps`: `cae/` holds
    best.pth, last.pth, config.yaml, log.jsonl. Read-only for the tests that share it."""
    from stage_helpers import cae_config
    from wildcapture.stages.train_cae import run

    out = tmp_path_factory.mktemp("stage3")
    run(cae_config(tiny_heatmaps / "heatmaps", out, "train.epochs=3"))
    return out
