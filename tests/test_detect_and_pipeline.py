"""detect.py on a folder of image files, and the stage-1-to-4 pipeline runner of reproduce.py."""
import csv
import hashlib
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

import wildcapture.paths
from wildcapture.cae import ConvAutoencoder
from wildcapture.config import ConfigError
from wildcapture.data import DatasetError
from wildcapture.errors import CheckpointError
from wildcapture.detect import COLUMNS, detect
from wildcapture.pipeline import run_pipeline, stage_configs

# (split, row in stage 2's files, file written under the folder)
PICKS = (("test_id", 0, "a.png"), ("test_id", 5, "sub/b.png"), ("test_id", 9, "c.PNG"),
         ("test_ood", 1, "d.png"), ("test_ood", 7, "sub/deeper/e.png"))


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def digit_folder(tiny_heatmaps, tmp_path_factory):
    """A folder of 5 digit PNGs (the images of stage-2 rows PICKS), in sub-folders too, plus a text file."""
    folder = tmp_path_factory.mktemp("images")
    pixels = np.rint(load_digits().images * 255.0 / 16.0).clip(0, 255).astype(np.uint8)  # as the digits benchmark
    for split, row, name in PICKS:
        source = _rows(tiny_heatmaps / "heatmaps" / split / "index.csv")[row]["source"]  # "digits/<i>"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[int(source.split("/")[1])], "L").save(folder / name)
    (folder / "sub" / "notes.txt").write_text("not an image")
    return folder


def test_detect_matches_an_independent_computation(digit_folder, tiny_heatmaps, tiny_cae, tmp_path):
    cae_path = tiny_cae / "cae" / "best.pth"
    rows = detect(digit_folder, cae_path, tmp_path / "out" / "detections.csv", batch_size=2, device="cpu")
    written = _rows(tmp_path / "out" / "detections.csv")
    assert list(written[0]) == list(COLUMNS) and len(rows) == len(written) == len(PICKS)
    by_name = {r["image"]: r for r in rows}
    assert sorted(by_name) == sorted(str(digit_folder / name) for _, _, name in PICKS)
    assert [r["image"] for r in written] == [r["image"] for r in rows]

    # reference: stage 2's batched pass over the same digits (array images, not files) and our own CAE pass
    best = torch.load(cae_path, map_location="cpu", weights_only=True)
    cae = ConvAutoencoder(**best["model_args"]).eval()
    cae.load_state_dict(best["model"])
    names = best["heatmaps"]["classifier"]["class_names"]
    for split, row, name in PICKS:
        got = by_name[str(digit_folder / name)]
        logits = torch.from_numpy(np.load(tiny_heatmaps / "heatmaps" / split / "logits.npy")[row]).double()
        heatmap = torch.from_numpy(np.load(tiny_heatmaps / "heatmaps" / split / "heatmaps.npy")[row])
        x = F.interpolate(heatmap[None, None], size=(16, 16), mode="bilinear", align_corners=False)
        x = x / x.max()
        with torch.no_grad():
            score = ((cae(x) - x) ** 2).mean().item()
        assert got["predicted_class"] == names[int(logits.argmax())]
        assert got["confidence"] == pytest.approx(logits.softmax(0).max().item(), rel=1e-5)
        assert got["ood_score"] == pytest.approx(score, rel=1e-4)
        assert got["threshold"] == best["threshold"]
        assert got["ood_flag"] == (got["ood_score"] > best["threshold"])
    for line, row in zip(written, rows):
        assert float(line["ood_score"]) == pytest.approx(row["ood_score"], rel=1e-12)
        assert line["ood_flag"] == str(row["ood_flag"]) and line["predicted_class"] == row["predicted_class"]

    # a threshold override flags by that threshold
    median = float(np.median([r["ood_score"] for r in rows]))
    again = detect(digit_folder, cae_path, tmp_path / "again.csv", device="cpu", threshold=median)
    assert [r["ood_flag"] for r in again] == [r["ood_score"] > median for r in rows]
    assert [r["ood_score"] for r in again] == pytest.approx([r["ood_score"] for r in rows], rel=1e-5)


def test_detect_rejects_empty_missing_folders_and_foreign_checkpoints(tiny_cae, tmp_path):
    cae_path = tiny_cae / "cae" / "best.pth"
    (tmp_path / "empty").mkdir()
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "readme.txt").write_text("no images here")
    for folder in ("empty", "text_only", "missing"):
        with pytest.raises(DatasetError, match=re.escape(str(tmp_path / folder))):
            detect(tmp_path / folder, cae_path, tmp_path / "out.csv", device="cpu")
    assert not (tmp_path / "out.csv").exists()
    torch.save(ConvAutoencoder(16, 512).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="names no classifier"):
        detect(tmp_path / "empty", tmp_path / "bare.pt", tmp_path / "out.csv", device="cpu")


def test_stage_configs_of_the_smoke_run():
    cfgs = stage_configs("digits", smoke=True)
    assert len(cfgs) == 4 and [c["exp"] for c in cfgs] == ["digits-smoke"] * 4
    train_vit, test_vit, train_ae, test_ae = cfgs
    assert train_vit["data"]["limit_per_split"] == 48 and train_vit["train"]["epochs"] == 1
    assert train_vit["train"]["batch_size"] == 16 and train_vit["data"]["download"] is False
    assert test_vit["batch_size"] == 16 and test_vit["gallery_size"] == 2
    assert train_ae["train"]["epochs"] == 1 and train_ae["train"]["batch_size"] == 16
    assert test_ae["test"]["gallery_size"] == 2
    assert train_ae["cae"] == test_ae["cae"]  # stage 4 rebuilds the CAE stage 3 trained
    assert stage_configs("digits")[0]["exp"] == "digits" and stage_configs("digits")[0]["train"]["epochs"] == 60


def test_stage_configs_load_the_benchmark_presets_and_apply_extra_keys_where_they_exist():
    cfgs = stage_configs("cifar10")
    assert [c["exp"] for c in cfgs] == ["cifar10"] * 4
    assert cfgs[0]["model"]["name"] == "vit_base_patch16_224.augreg_in21k" and cfgs[0]["data"]["name"] == "cifar10"
    assert cfgs[2]["cae"]["input_size"] == cfgs[3]["cae"]["input_size"] == 128

    cfgs = stage_configs("digits", extra=["device=cpu", "train.epochs=3", "heatmap.kind=rollout", "cae.zdim=64"])
    assert [c["device"] for c in cfgs] == ["cpu"] * 4
    assert [cfgs[i]["train"]["epochs"] for i in (0, 2, 3)] == [3, 3, 3] and "train" not in cfgs[1]
    assert cfgs[1]["heatmap"]["kind"] == "rollout"
    assert cfgs[2]["cae"]["zdim"] == cfgs[3]["cae"]["zdim"] == 64

    with pytest.raises(ValueError, match="unknown benchmark 'mnist'"):
        stage_configs("mnist")
    # a key that no stage has is a typo, not something to drop silently
    with pytest.raises(ConfigError, match="trian.epochs"):
        stage_configs("digits", extra=["trian.epochs=3"])


@pytest.mark.e2e
def test_smoke_pipeline_hands_files_from_stage_to_stage(tmp_path, monkeypatch):
    # every default output path (weights/, data/heatmaps/, results/) resolves against REPO_ROOT: point it at tmp_path
    monkeypatch.setattr(wildcapture.paths, "REPO_ROOT", tmp_path)
    result = run_pipeline("digits", smoke=True, extra=["device=cpu"])

    assert list(result["seconds"]) == ["1 train classifier", "2 test classifier", "3 train CAE", "4 test CAE"]
    vit, cae = tmp_path / "weights" / "digits-smoke" / "vit", tmp_path / "weights" / "digits-smoke" / "cae"
    heatmaps, results = tmp_path / "data" / "heatmaps" / "digits-smoke", tmp_path / "results" / "digits-smoke"
    assert (vit / "best.pth").is_file() and (cae / "best.pth").is_file()
    best = torch.load(cae / "best.pth", map_location="cpu", weights_only=True)
    # the classifier is recorded relative to the repository, with its digest
    assert best["heatmaps"]["classifier"]["path"] == "weights/digits-smoke/vit/best.pth"
    assert best["heatmaps"]["classifier"]["sha256"] == hashlib.sha256((vit / "best.pth").read_bytes()).hexdigest()
    assert best["model_args"]["input_size"] == 32
    assert np.load(heatmaps / "test_ood" / "heatmaps.npy").shape == (48, 4, 4)

    table = json.loads((results / "ood_table.json").read_text())["rows"]
    assert [r["detector"] for r in table] == ["cae", "msp", "maxlogit", "energy", "mahalanobis", "knn", "vim"]
    assert [r["detector"] for r in result["rows"]] == [r["detector"] for r in table]
    assert all(r["n_id"] == 48 and r["n_ood"] == 48 and 0 <= r["auroc"] <= 1 for r in table)
    assert len(_rows(results / "recon_errors.csv")) == 96
