"""Several OOD sets end to end on tiny data: stage 2 writes one split per set and records the protocol, stage 4 scores
each set on its own and averages each group, as OpenOOD v1.5 reports.

The AUROCs are recomputed from recon_errors.pkl and baseline_scores.csv with pytorch-ood's `OODMetrics` (OOD = labels
< 0, the positive class; requirements-test.txt pins it), an implementation independent of ours."""
import csv
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from stage_helpers import cae_config, stage2_config
from wildcapture.heatmap_store import read_meta, read_protocol
from wildcapture.ood.metrics import METRIC_NAMES
from wildcapture.ood.table import MEAN, read_table
from wildcapture.stages import evaluate_classifier, score_cae, train_cae

from pytorch_ood.metrics import OODMetrics

# heldout: the digits 5-9 stage 1 never saw; tin: an OpenOOD image list; tex: a folder; pick: a `val` set (scored,
# averaged in no group)
SETS = [{"name": "heldout", "group": "near", "source": "classes"},
        {"name": "tin", "group": "near", "source": "imagelist", "list": "lists/test_tin.txt"},
        {"name": "tex", "group": "far", "source": "imagefolder", "root": "textures"},
        {"name": "pick", "group": "val", "source": "imagelist", "list": "lists/val_pick.txt", "root": "images"}]
SIZES = {"heldout": 40, "tin": 5, "tex": 6, "pick": 3}
BASELINES = ("msp", "maxlogit", "energy", "mahalanobis", "rmds", "knn", "vim")


def _auroc(id_scores, ood_scores):
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    metrics = OODMetrics()
    metrics.update(torch.from_numpy(np.r_[id_scores, ood_scores]),
                   torch.from_numpy(np.r_[np.zeros(len(id_scores)), -np.ones(len(ood_scores))]).long())
    return float(metrics.compute()["AUROC"])


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _data(root):
    """The OOD sets' files under `root` (data.root): 5 listed images, 6 in a folder, 3 listed from images/."""
    for i in range(SIZES["tin"]):
        _png(root / "images" / "tin" / f"{i}.png", 100 + i)
    for i in range(SIZES["tex"]):
        _png(root / "textures" / ("banded" if i < 3 else "dotted") / f"{i}.png", 200 + i)
    for i in range(SIZES["pick"]):
        _png(root / "images" / "pick" / f"{i}.png", 300 + i)
    (root / "lists").mkdir()
    (root / "lists" / "test_tin.txt").write_text("".join(f"images/tin/{i}.png 0\n" for i in range(SIZES["tin"])))
    (root / "lists" / "val_pick.txt").write_text("".join(f"pick/{i}.png 0\n" for i in range(SIZES["pick"])))


def _flow(sets):
    return "[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in s.items()) + "}" for s in sets) + "]"


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def multi(tiny_vit_checkpoint, tmp_path_factory):
    """Stages 2-4 on the tiny classifier of conftest with the four sets: (data.root, stage-2 folder, stage-3/4
    folder)."""
    root = tmp_path_factory.mktemp("multi")
    data, stage2, stage34 = root / "data", root / "s2", root / "s34"
    _data(data)
    # the classifier's ID data (its 40 digits per split), the OOD sets declared here
    evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, stage2, "data_from_checkpoint=false",
                                          "data.limit_per_split=40", f"data.root={data}",
                                          f"data.ood_sets={_flow(SETS)}"))
    train_cae.run(cae_config(stage2 / "heatmaps", stage34, "train.epochs=3"))
    score_cae.run(cae_config(stage2 / "heatmaps", stage34,
                             f"test.baseline_scores={stage2 / 'results' / 'baseline_scores.csv'}"))
    return data, stage2, stage34


@pytest.mark.e2e
def test_stage_2_writes_a_split_per_set_and_records_the_protocol(multi):
    data, stage2, _ = multi
    meta = read_meta(stage2 / "heatmaps")
    assert meta["protocol"] == SETS and read_protocol(meta).ood_splits == tuple(f"ood_{s['name']}" for s in SETS)
    assert {split: info["n"] for split, info in meta["splits"].items()} == {
        "train_id": 40, "val_id": 40, "test_id": 40, **{f"ood_{k}": n for k, n in SIZES.items()}}
    index = {s: _rows(stage2 / "heatmaps" / f"ood_{s}" / "index.csv") for s in SIZES}
    assert [r["source"] for r in index["tin"]] == [str(data / "images" / "tin" / f"{i}.png") for i in range(5)]
    assert [r["class_name"] for r in index["tex"]] == ["banded"] * 3 + ["dotted"] * 3
    assert [r["source"] for r in index["pick"]] == [str(data / "images" / "pick" / f"{i}.png") for i in range(3)]
    assert {r["label"] for s in SIZES for r in index[s]} == {"-1"}
    for s, n in SIZES.items():
        assert np.load(stage2 / "heatmaps" / f"ood_{s}" / "heatmaps.npy").shape[0] == n
    scores = _rows(stage2 / "results" / "baseline_scores.csv")
    assert [r["split"] for r in scores] == ["test_id"] * 40 + [f"ood_{s}" for s, n in SIZES.items() for _ in range(n)]


@pytest.mark.e2e
def test_the_table_has_a_row_per_detector_per_set_and_the_group_means(multi):
    _, stage2, stage34 = multi
    table = read_table(stage34 / "results" / "ood_table.csv")
    detectors = ["cae", "cae+mahalanobis", *BASELINES]
    assert [(r["detector"], r["ood_set"], r["group"]) for r in table] == [
        *((d, s["name"], s["group"]) for s in SETS for d in detectors),
        *((d, MEAN, "near") for d in detectors), *((d, MEAN, "far") for d in detectors)]
    per_set = {(r["detector"], r["ood_set"]): r for r in table if r["ood_set"] != MEAN}
    for row in table:
        assert row["n_id"] == 40
        if row["ood_set"] != MEAN:
            assert row["n_ood"] == SIZES[row["ood_set"]]
            continue
        members = [s["name"] for s in SETS if s["group"] == row["group"]]  # near: heldout, tin; far: tex
        assert row["n_ood"] == sum(SIZES[m] for m in members)
        for metric in METRIC_NAMES:
            assert row[metric] == pytest.approx(np.mean([per_set[row["detector"], m][metric] for m in members]),
                                                abs=1e-12)

    # every per-set AUROC, recomputed from the saved scores
    with open(stage34 / "results" / "recon_errors.pkl", "rb") as handle:
        recon = pickle.load(handle)
    assert recon["ood_set"] == [""] * 40 + [s for s, n in SIZES.items() for _ in range(n)]
    assert recon["split"] == ["test_id"] * 40 + [f"ood_{s}" for s, n in SIZES.items() for _ in range(n)]
    assert list(recon["is_ood"]) == [0] * 40 + [1] * sum(SIZES.values())
    ood_set = np.asarray(recon["ood_set"])
    baselines = _rows(stage2 / "results" / "baseline_scores.csv")
    split = np.asarray([r["split"] for r in baselines])
    for s in SIZES:
        for detector, values in (("cae", recon["errors"]), ("cae+mahalanobis", recon["fusion_scores"])):
            values = np.asarray(values)
            assert per_set[detector, s]["auroc"] == pytest.approx(_auroc(values[ood_set == ""], values[ood_set == s]),
                                                                  abs=1e-9), (detector, s)
        for detector in BASELINES:
            values = np.asarray([float(r[detector]) for r in baselines])
            assert per_set[detector, s]["auroc"] == pytest.approx(
                _auroc(values[split == "test_id"], values[split == f"ood_{s}"]), abs=1e-9), (detector, s)
    markdown = (stage34 / "results" / "ood_table.md").read_text()
    assert "| cae | tex | far |" in markdown and "| cae | mean | near |" in markdown
    assert "tex (far, 6 images)" in markdown and "a mean row averages a group's sets" in markdown
    for name in ("roc_curves.png", "score_histograms.png", "reconstruction_gallery.png"):
        assert (stage34 / "results" / name).stat().st_size > 0


@pytest.mark.e2e
def test_images_gone_since_stage_2_leave_the_gallery_heatmaps_only(multi, tmp_path, capsys):
    data, stage2, stage34 = multi
    moved = tmp_path / "textures"
    shutil.move(data / "textures", moved)
    try:
        (data / "textures" / "banded").mkdir(parents=True)
        shutil.copy(moved / "banded" / "0.png", data / "textures" / "banded" / "0.png")  # 1 of the 6 images left
        capsys.readouterr()
        score_cae.run(cae_config(stage2 / "heatmaps", stage34, f"results_dir={tmp_path / 'results'}",
                                 f"test.baseline_scores={stage2 / 'results' / 'baseline_scores.csv'}"))
    finally:
        shutil.rmtree(data / "textures")
        shutil.move(moved, data / "textures")
    assert ("note: the gallery shows heatmaps only: split ood_tex of stage 2's data config no longer holds the 6 "
            "images stage 2 wrote") in capsys.readouterr().out
    assert (tmp_path / "results" / "reconstruction_gallery.png").stat().st_size > 0
    assert read_table(tmp_path / "results" / "ood_table.csv") == read_table(stage34 / "results" / "ood_table.csv")
