"""The stage-1-to-4 pipeline runner of reproduce.py."""
import csv
import hashlib
import json

import numpy as np
import pytest
import torch

import wildcapture.paths
from wildcapture.config import ConfigError
from wildcapture.pipeline import check_stage_configs, run_pipeline, stage_configs


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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
    assert cfgs[2]["cae"]["paper"]["input_size"] == cfgs[3]["cae"]["paper"]["input_size"] == 128

    cfgs = stage_configs("digits", extra=["device=cpu", "train.epochs=3", "heatmap.kind=rollout", "cae.paper.zdim=64"])
    assert [c["device"] for c in cfgs] == ["cpu"] * 4
    assert [cfgs[i]["train"]["epochs"] for i in (0, 2, 3)] == [3, 3, 3] and "train" not in cfgs[1]
    assert cfgs[1]["heatmap"]["kind"] == "rollout"
    assert cfgs[2]["cae"]["paper"]["zdim"] == cfgs[3]["cae"]["paper"]["zdim"] == 64

    with pytest.raises(ValueError, match="unknown benchmark 'mnist'"):
        stage_configs("mnist")
    # a key that no stage has is a typo, not something to drop silently
    with pytest.raises(ConfigError, match="trian.epochs"):
        stage_configs("digits", extra=["trian.epochs=3"])


def test_per_stage_items_go_to_their_stage_only():
    cfgs = stage_configs("digits", extra=["train.epochs=3"], per_stage=((), (), ("train.epochs=5",), ()))
    assert [cfgs[i]["train"]["epochs"] for i in (0, 2, 3)] == [3, 5, 3]
    with pytest.raises(ConfigError, match="unknown config key 'heatmap'"):
        stage_configs("digits", per_stage=(("heatmap.kind=rollout",), (), (), ()))  # stage 1 has no such key


def test_a_stage_prefix_sends_an_item_to_that_stage_alone():
    cfgs = stage_configs("digits", extra=["1:train.epochs=4", "train.batch_size=8", "3: train.epochs=7"])
    assert [c["train"]["epochs"] for c in cfgs if "train" in c] == [4, 7, cfgs[3]["train"]["epochs"]]
    assert cfgs[3]["train"]["epochs"] not in (4, 7) and {c["train"]["batch_size"] for c in cfgs if "train" in c} == {8}
    with pytest.raises(ConfigError, match="unknown config key 'heatmap'"):
        stage_configs("digits", extra=["1:heatmap.kind=rollout"])  # stage 1 has no such key
    with pytest.raises(ConfigError, match="5:train"):
        stage_configs("digits", extra=["5:train.epochs=4"])  # there is no stage 5: an unknown key


def test_stage_values_are_checked_before_any_stage_runs():
    with pytest.raises(ConfigError, match="cae.paper.input_size must be a positive multiple of 16, got 20"):
        check_stage_configs(stage_configs("digits", extra=["cae.arch=paper", "cae.paper.input_size=20"]))
    with pytest.raises(ConfigError, match="heatmap.kind"):
        check_stage_configs(stage_configs("digits", extra=["heatmap.kind=cls_first"]))
    check_stage_configs(stage_configs("digits"))


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
    # the digits defaults: cls_all heatmaps (4 blocks x 4 heads) into the small CAE at the 4x4 grid
    assert best["model_args"] == {"arch": "small", "in_channels": 16, "grid": [4, 4], "width": 32, "zdim": 8}
    assert np.load(heatmaps / "ood_heldout" / "heatmaps.npy").shape == (48, 16, 4, 4)

    table = json.loads((results / "ood_table.json").read_text())["rows"]
    assert [r["detector"] for r in table] == ["cae", "cae+mahalanobis", "msp", "maxlogit", "energy", "mahalanobis",
                                                "rmds", "knn", "vim"]
    assert [r["detector"] for r in result["rows"]] == [r["detector"] for r in table]
    assert all(r["n_id"] == 48 and r["n_ood"] == 48 and 0 <= r["auroc"] <= 1 for r in table)
    assert len(_rows(results / "recon_errors.csv")) == 96
