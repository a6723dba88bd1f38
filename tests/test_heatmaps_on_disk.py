"""Heatmaps on disk: stage 2 streams its splits into the final .npy files, float16 storage, stage 3 reads them
from disk with the same weights as in memory, a failed or killed stage 2 leaves nothing passed off as complete."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from stage_helpers import cae_config, stage2_config

from wildcapture.cae.engine import train_one_epoch
from wildcapture.cae.heatmap_data import HeatmapFile
from wildcapture.cae.architectures import cae_from_config, heatmap_prep
from wildcapture.errors import IncompleteOutputError, ProvenanceError
from wildcapture.heatmap_store import read_array, read_meta
from wildcapture.stages import evaluate_classifier, score_cae, train_cae


def _files(folder) -> dict:
    """{path: bytes} of every file under `folder` but the run lock."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _train(source, epochs: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = cae_from_config({"arch": "small", "small": {"width": 8, "zdim": 4}}, (3, 5, 5))
    prep = heatmap_prep(model, "bilinear", "max")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        train_one_epoch(model, source, prep, optimizer, 7, torch.Generator().manual_seed(epoch), "cpu",
                        progress=False)
    return model.state_dict()


def test_memory_mapped_training_gives_the_in_memory_weights_bit_for_bit(tmp_path, monkeypatch):
    maps = np.random.default_rng(0).random((45, 3, 5, 5), dtype=np.float32)
    np.save(tmp_path / "h.npy", maps)
    in_memory = _train(torch.from_numpy(maps))
    monkeypatch.setattr("wildcapture.cae.heatmap_data.CHUNK_BYTES", 7 * 3 * 25 * 4 * 2)  # 2 batches per chunk
    mapped = _train(HeatmapFile(tmp_path / "h.npy"))
    assert in_memory.keys() == mapped.keys()
    for key in in_memory:
        assert torch.equal(in_memory[key], mapped[key]), key


def test_heatmap_file_reads_rows_in_their_order_into_a_given_array(tmp_path):
    maps = np.random.default_rng(0).random((6, 2, 3, 3)).astype(np.float16)
    np.save(tmp_path / "h.npy", maps)
    file = HeatmapFile(tmp_path / "h.npy")
    out = np.full((3, 2, 3, 3), np.nan, dtype=np.float16)
    assert file.rows(np.array([4, 0, -1]), out=out) is out
    np.testing.assert_array_equal(out, maps[[4, 0, 5]])
    np.testing.assert_array_equal(file.rows(slice(1, 4), out=out), maps[1:4])
    np.testing.assert_array_equal(file.rows(slice(0, 6, 2)), maps[0:6:2])
    np.testing.assert_array_equal(file.rows(2, out=out[0]), maps[2])
    np.testing.assert_array_equal(out[0], maps[2])
    with pytest.raises(ValueError, match="expected a C-contiguous float16"):
        file.rows(slice(0, 2), out=out)
    with pytest.raises(IndexError, match="out of range"):
        file.rows(np.array([6]))


def test_float16_heatmaps_round_trip_and_stage4_knows_what_it_reads(tiny_vit_checkpoint, tiny_heatmaps, tmp_path):
    evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path, "heatmap.dtype=float16"))
    meta = read_meta(tmp_path / "heatmaps")
    assert meta["heatmap"]["dtype"] == "float16"
    half = read_array(tmp_path / "heatmaps", meta, "test_id", "heatmaps")
    full_meta = read_meta(tiny_heatmaps / "heatmaps")
    full = read_array(tiny_heatmaps / "heatmaps", full_meta, "test_id", "heatmaps")
    assert isinstance(half, np.memmap) and half.dtype == np.float16 and full.dtype == np.float32
    np.testing.assert_array_equal(half, full.astype(np.float16))  # the same pass, rounded once
    assert read_array(tmp_path / "heatmaps", meta, "test_id", "logits").dtype == np.float32
    train_cae.run(cae_config(tmp_path / "heatmaps", tmp_path, "train.epochs=1"))
    ckpt = torch.load(tmp_path / "cae" / "best.pth", weights_only=True)
    assert ckpt["heatmaps"]["heatmap"]["dtype"] == "float16"
    with pytest.raises(ProvenanceError, match="heatmap.dtype"):  # float16 CAE on float32 heatmaps
        score_cae.run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, f"output_dir={tmp_path / 'cae'}",
                                 f"results_dir={tmp_path / 'other'}", "test.baselines=false"))
    with pytest.raises(ProvenanceError, match="heatmap.dtype"):  # stage 2 will not silently replace them
        evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path))


@pytest.mark.parametrize("complete_before", [False, True])
def test_a_stage2_killed_mid_split_leaves_no_partial_npy_passed_off_as_complete(
        tiny_vit_checkpoint, tmp_path, monkeypatch, complete_before):
    if complete_before:
        evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path))
    before = _files(tmp_path / "heatmaps")
    real = evaluate_classifier.SplitWriter

    class Dying(real):
        def write(self, start, *batch):  # killed in the second batch of train_id, the first one on disk
            if start > 0:
                raise KeyboardInterrupt("killed")
            super().write(start, *batch)

    monkeypatch.setattr(evaluate_classifier, "SplitWriter", Dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path, "batch_size=16", "overwrite=true"))
    assert _files(tmp_path / "heatmaps") == before  # the staging folder went with the failure; the complete run is byte-identical
    if complete_before:
        read_array(tmp_path / "heatmaps", read_meta(tmp_path / "heatmaps"), "train_id", "heatmaps")
    else:
        with pytest.raises(IncompleteOutputError):
            read_meta(tmp_path / "heatmaps")


@pytest.mark.e2e
def test_a_stage2_killed_with_sigkill_mid_split_leaves_the_complete_run_and_the_same_command_completes(
        tiny_vit_checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from stage_helpers import PAPER_HEATMAP

    from wildcapture.paths import REPO_ROOT

    args = [f"checkpoint={tiny_vit_checkpoint}", f"heatmaps_dir={tmp_path / 'heatmaps'}",
            f"results_dir={tmp_path / 'results'}", "device=cpu", "gallery_size=0", "baselines.knn_k=5",
            "heatmap.precision=fp32", *PAPER_HEATMAP]
    evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path, "gallery_size=0"))
    before = _files(tmp_path / "heatmaps")
    command = [sys.executable, str(REPO_ROOT / "Test_Classifier" / "test_classifier.py"), *args, "batch_size=1",
               "overwrite=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged = tmp_path / "heatmaps" / ".heatmaps.incomplete"
    deadline = time.time() + 120
    while time.time() < deadline and not list(staged.glob("*/heatmaps.npy")) and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # mid-split: its .npy files exist, at full size, partly written
    proc.wait()
    assert list(staged.glob("*/heatmaps.npy")), "stage 2 finished before it could be killed"
    # the staged files stay apart; the complete run is byte-identical and still reads as complete
    assert {p: b for p, b in _files(tmp_path / "heatmaps").items() if staged not in p.parents} == before
    read_array(tmp_path / "heatmaps", read_meta(tmp_path / "heatmaps"), "train_id", "heatmaps")
    again = subprocess.run(command[:-2] + ["batch_size=16", "overwrite=true"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not staged.exists()
    meta = read_meta(tmp_path / "heatmaps")
    first = next(b for p, b in before.items() if p.name == "heatmaps.npy" and p.parent.name == "train_id")
    np.testing.assert_array_equal(read_array(tmp_path / "heatmaps", meta, "train_id", "heatmaps"),
                                  np.load(io.BytesIO(first)))  # the same classifier and batch size: the same maps
