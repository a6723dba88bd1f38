"""Stage 2 end to end on a tiny checkpoint: files agree with an independent forward pass."""
import csv

import numpy as np
import pytest
import torch

from wildcapture.storage import load_checkpoint
from wildcapture.classifier.data_setup import attach_transforms
from wildcapture.data.build import build_splits
from wildcapture.heatmap_store import read_head, read_meta, read_protocol
from wildcapture.stages.evaluate_classifier import run
from wildcapture.vit import WeightsMismatchError, build_vit

from stage_helpers import stage2_config

SPLITS = ("train_id", "val_id", "test_id", "ood_heldout")  # the default protocol's splits


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.e2e
def test_stage2_writes_consistent_outputs(tiny_vit_checkpoint, tmp_path):
    report = run(stage2_config(tiny_vit_checkpoint, tmp_path))
    ckpt = load_checkpoint(tiny_vit_checkpoint)
    model = build_vit(ckpt["model_args"]).eval()
    model.load_state_dict(ckpt["model"])
    bench = build_splits(ckpt["config"]["data"])
    attach_transforms(bench, ckpt["config"]["data"], ckpt["input_spec"], augment_train=False)

    for split in SPLITS:
        folder = tmp_path / "heatmaps" / split
        heatmaps, logits = np.load(folder / "heatmaps.npy"), np.load(folder / "logits.npy")
        features, index = np.load(folder / "features.npy"), _rows(folder / "index.csv")
        n = len(bench.splits[split])
        assert heatmaps.shape == (n, 4, 4) and logits.shape == (n, 5) and features.shape == (n, 16)
        assert [r["source"] for r in index] == bench.splits[split].sources
        assert [int(r["pred"]) for r in index] == logits.argmax(1).tolist()
        # row i is image i: an independent plain forward pass gives the same logits
        images = torch.stack([bench.splits[split][i][0] for i in range(n)])
        with torch.no_grad():
            np.testing.assert_allclose(model(images).numpy(), logits, atol=1e-5)
        assert np.all(heatmaps >= 0) and np.all(heatmaps.sum((1, 2)) <= 1 + 1e-6)

    test_logits = np.load(tmp_path / "heatmaps" / "test_id" / "logits.npy")
    labels = bench.splits["test_id"].labels
    assert report["accuracy"] == pytest.approx((test_logits.argmax(1) == labels).mean())
    assert np.asarray(report["confusion_matrix"]).sum() == len(labels)

    meta = read_meta(tmp_path / "heatmaps")  # the default protocol: the held-out digits as one near set
    assert meta["protocol"] == [{"name": "heldout", "group": "near", "source": "classes"}]
    weight, bias = read_head(tmp_path / "heatmaps", meta)  # the head ViM fits on: logits = W f + b
    assert np.array_equal(weight, model.head.weight.detach().numpy()) and weight.dtype == np.float64
    test_features = np.load(tmp_path / "heatmaps" / "test_id" / "features.npy")
    np.testing.assert_allclose(test_features @ weight.T + bias, test_logits, atol=1e-4)
    assert read_protocol(meta).splits == SPLITS and list(meta["splits"]) == list(SPLITS)
    scores = _rows(tmp_path / "results" / "baseline_scores.csv")
    assert [r["split"] for r in scores] == (["test_id"] * len(bench.splits["test_id"])
                                            + ["ood_heldout"] * len(bench.splits["ood_heldout"]))
    assert set(scores[0]) >= {"split", "row", "source", "msp", "maxlogit", "energy", "mahalanobis", "rmds", "knn",
                              "vim"}
    first = scores[0]
    expected_msp = -torch.softmax(torch.from_numpy(test_logits[0]).double(), 0).max().item()
    assert float(first["msp"]) == pytest.approx(expected_msp, rel=1e-5)
    for name in ("classifier_report.json", "confusion_matrix.png", "heatmap_gallery.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0


def test_paper_format_weights_load_and_wrong_class_count_is_clear(tiny_vit_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_vit_checkpoint)
    torch.save({"modelVit." + k: v for k, v in ckpt["model"].items()}, tmp_path / "paper.pt")
    arch = [f"model.{k}={v}" for k, v in ckpt["model_args"]["kwargs"].items() if k != "drop_path_rate"]
    base = [f"model.name={ckpt['model_args']['name']}", *arch, "data.limit_per_split=20", "heatmap.kind=rollout"]
    cfg = stage2_config(tmp_path / "paper.pt", tmp_path / "ok", *base)
    run(cfg)
    logits = np.load(tmp_path / "ok" / "heatmaps" / "test_id" / "logits.npy")
    # the same weights loaded directly give the same logits on the same images
    model = build_vit(ckpt["model_args"]).eval()
    model.load_state_dict(ckpt["model"])
    bench = build_splits(cfg["data"])
    attach_transforms(bench, cfg["data"], ckpt["input_spec"], augment_train=False)
    images = torch.stack([bench.splits["test_id"][i][0] for i in range(20)])
    with torch.no_grad():
        np.testing.assert_allclose(model(images).numpy(), logits, atol=1e-5)
    with pytest.raises(WeightsMismatchError, match="has 5 classes but the model has 3"):
        run(stage2_config(tmp_path / "paper.pt", tmp_path / "bad", *base, "data.id_classes=[0,1,2]",
                          "data.ood_classes=[5,6]"))


def test_missing_checkpoint_names_the_file_and_where_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth \(config key checkpoint\).*drive.google.com.*stage 1"):
        run(stage2_config(tmp_path / "nothere.pth", tmp_path))
    cfg = stage2_config(tmp_path / "x.pth", tmp_path, "checkpoint=null", "exp=never-trained")
    with pytest.raises(FileNotFoundError, match=r"weights/never-trained/vit/best\.pth; run stage 1"):
        run(cfg)
    assert not (tmp_path / "heatmaps" / "heatmaps_meta.yaml").exists()


@pytest.mark.e2e
def test_torchrun_two_processes_write_the_arrays_of_one(tiny_vit_checkpoint, tiny_heatmaps, tmp_path):
    import os
    import subprocess
    import sys

    from stage_helpers import PAPER_HEATMAP

    from wildcapture.paths import REPO_ROOT

    # the same config as the single-process `tiny_heatmaps` run (40 items per split, batches of 16)
    args = [f"checkpoint={tiny_vit_checkpoint}", f"heatmaps_dir={tmp_path / 'heatmaps'}",
            f"results_dir={tmp_path / 'results'}", "device=cpu", "batch_size=16", "gallery_size=2", "baselines.knn_k=5",
            *PAPER_HEATMAP, "heatmap.precision=fp32"]  # the in-process run's auto (the probe is patched there)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO_ROOT / "Test_Classifier" / "test_classifier.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    for split in SPLITS:
        for name in ("heatmaps", "logits", "features"):
            single = np.load(tiny_heatmaps / "heatmaps" / split / f"{name}.npy")
            np.testing.assert_array_equal(np.load(tmp_path / "heatmaps" / split / f"{name}.npy"), single, err_msg=name)
        assert (tmp_path / "heatmaps" / split / "index.csv").read_bytes() == \
            (tiny_heatmaps / "heatmaps" / split / "index.csv").read_bytes()
    assert (tmp_path / "results" / "baseline_scores.csv").read_bytes() == \
        (tiny_heatmaps / "results" / "baseline_scores.csv").read_bytes()


def test_each_batch_is_stored_once_the_next_forward_pass_is_launched(monkeypatch):
    from torch.utils.data import DataLoader, TensorDataset

    from wildcapture.classifier import inference

    log = []

    def forward(_model, images, _kind, _block):
        first = int(images[0, 0, 0, 0])
        log.append(("forward", first))
        rows = images[:, 0, 0, :1]  # (B, 1): each image's number
        return rows * 10, rows.expand(-1, 3).clone(), images[:, 0, :2, :2].clone()

    def sink(start, logits, features, heatmaps):
        log.append(("store", start))
        assert logits[:, 0].tolist() == [10.0 * i for i in range(start, start + len(logits))]

    monkeypatch.setattr(inference, "forward_with_heatmaps", forward)
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    loader = DataLoader(TensorDataset(images, torch.zeros(5)), batch_size=2)
    inference.infer_split(torch.nn.Identity(), loader, 5, "cls_last", -1, torch.device("cpu"), sink=sink)
    assert log == [("forward", 0), ("forward", 2), ("store", 0), ("forward", 4), ("store", 2), ("store", 4)]
