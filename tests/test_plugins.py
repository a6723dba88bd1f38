"""Plug-ins: a toy heatmap kind, a toy detector and a toy CAE architecture, each defined here and registered in one
line (`monkeypatch.setitem`, undone after the test), run through stages 2-4 and checked against an independent
computation."""
import csv

import numpy as np
import pytest
import torch
import yaml
from attention_reference import manual_attention
from torch import nn

from wildcapture.attention import ClsKind, HEATMAP_KINDS
from wildcapture.cae.architectures import ARCHITECTURES, check_arch_settings
from wildcapture.classifier.data_setup import attach_transforms
from wildcapture.data.build import build_splits
from wildcapture.detector import Detector
from wildcapture.errors import ConfigError
from wildcapture.ood.baselines import DETECTORS
from wildcapture.ood.metrics import auroc
from wildcapture.ood.table import read_table
from wildcapture.stages import evaluate_classifier, score_cae, train_cae
from wildcapture.stages.score_cae import read_recon_errors
from wildcapture.storage import load_checkpoint
from wildcapture.vit import build_vit

from stage_helpers import cae_config, stage2_config

TESTS = ("test_id", "ood_heldout")

# --- the plug-ins --------------------------------------------------------------------------------------------------

# The maximum over heads of the CLS query's attention to the patches, in the chosen block.
CLS_MAX = ClsKind(lambda block, depth: [block], lambda rows: rows.amax(1))


class ToyNorm(Detector):
    """Score = the L2 norm of the pre-logit features; nothing to fit."""

    name = "toy_norm"
    fit_inputs = ()
    inputs = ("features",)

    def score(self, features):
        return np.linalg.norm(np.asarray(features, dtype=np.float64), axis=1)


class ToyLinear(nn.Module):
    """A linear autoencoder at the heatmaps' native grid: flatten C*h*w -> zdim -> C*h*w, unflatten."""

    def __init__(self, in_channels, grid, zdim=3):
        super().__init__()
        if not isinstance(zdim, int) or zdim < 1:
            raise ValueError(f"zdim must be a positive integer, got {zdim!r}")
        self.in_channels, self.grid, self.zdim = in_channels, tuple(grid), zdim
        cells = in_channels * self.grid[0] * self.grid[1]
        self.encode, self.decode = nn.Linear(cells, zdim), nn.Linear(zdim, cells)

    @property
    def input_shape(self):
        return (self.in_channels, *self.grid)

    @property
    def resize_to(self):
        return None

    def constructor_args(self):
        return {"in_channels": self.in_channels, "grid": list(self.grid), "zdim": self.zdim}

    def forward(self, x):
        return self.decode(self.encode(x.flatten(1))).reshape(x.shape)


# --- helpers -------------------------------------------------------------------------------------------------------

def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _classifier_and_test_images(checkpoint, split, count):
    """The stage-1 ViT of `checkpoint` (eval) and the first `count` images of `split` as stage 2 feeds them."""
    ckpt = load_checkpoint(checkpoint)
    model = build_vit(ckpt["model_args"]).eval()
    model.load_state_dict(ckpt["model"])
    bench = build_splits(ckpt["config"]["data"])
    attach_transforms(bench, ckpt["config"]["data"], ckpt["input_spec"], augment_train=False)
    return model, torch.stack([bench.splits[split][i][0] for i in range(count)])


def _max_normalised(raw):
    """Independent `cae.norm=max`: each image's (single-channel) map divided by its maximum, zeros where it is 0,
    as the CAE's input (N, 1, h, w)."""
    x = torch.from_numpy(np.asarray(raw, dtype=np.float32))[:, None]
    hi = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > 0, x / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.zeros_like(x))


# --- the tests -----------------------------------------------------------------------------------------------------

def test_a_heatmap_kind_registered_in_one_line_runs_in_stage_2(tiny_vit_checkpoint, tiny_heatmaps, tmp_path,
                                                                monkeypatch):
    cfg = stage2_config(tiny_vit_checkpoint, tmp_path, "heatmap.kind=cls_max", "gallery_size=0")
    with pytest.raises(ConfigError, match=r"heatmap\.kind must be one of .*; got 'cls_max'") as refused:
        evaluate_classifier.check_config(cfg)
    assert all(kind in str(refused.value) for kind in HEATMAP_KINDS)

    monkeypatch.setitem(HEATMAP_KINDS, "cls_max", CLS_MAX)
    evaluate_classifier.run(cfg)

    heatmaps = np.load(tmp_path / "heatmaps" / "test_id" / "heatmaps.npy")
    model, images = _classifier_and_test_images(tiny_vit_checkpoint, "test_id", 6)
    depth, npt = len(model.blocks), model.num_prefix_tokens
    with torch.no_grad():
        attention = manual_attention(model, images, cfg["heatmap"]["block"] % depth)  # (N, heads, T, T)
    expected = attention[:, :, 0, npt:].amax(1).reshape(len(images), *heatmaps.shape[1:]).numpy()
    assert heatmaps.shape == (40, 4, 4) and heatmaps.dtype == np.float32
    np.testing.assert_allclose(heatmaps[:6], expected, atol=1e-5, rtol=0)
    # not the head mean (cls_last, the shared stage-2 run of the same classifier): the kind did something of its own
    cls_last = np.load(tiny_heatmaps / "heatmaps" / "test_id" / "heatmaps.npy")
    assert np.all(heatmaps >= cls_last - 1e-6) and not np.allclose(heatmaps, cls_last, atol=1e-4)

    meta = yaml.safe_load((tmp_path / "heatmaps" / "heatmaps_meta.yaml").read_text())
    assert meta["heatmap"]["kind"] == "cls_max" and meta["splits"]["test_id"]["grid"] == [4, 4]

    monkeypatch.undo()  # the registration ends with the test: the kind is refused again
    assert "cls_max" not in HEATMAP_KINDS
    with pytest.raises(ConfigError, match="got 'cls_max'"):
        evaluate_classifier.check_config(cfg)


def test_a_detector_registered_in_one_line_is_scored_by_stage_2_and_tabled_by_stage_4(
        tiny_vit_checkpoint, tiny_cae, tmp_path, monkeypatch):
    monkeypatch.setitem(DETECTORS, "toy_norm", ToyNorm)
    evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path, "gallery_size=0"))
    # stage 4 with the shared stage-3 CAE (trained on heatmaps of the same classifier and kind), reading this
    # stage-2 run's heatmaps and baseline scores
    score_cae.run(cae_config(tmp_path / "heatmaps", tiny_cae, f"results_dir={tmp_path / 'results'}"))

    norms = {s: np.linalg.norm(np.load(tmp_path / "heatmaps" / s / "features.npy").astype(np.float64), axis=1)
             for s in TESTS}
    scores = _rows(tmp_path / "results" / "baseline_scores.csv")
    assert "toy_norm" in scores[0] and "msp" in scores[0]  # added to the built-in detectors
    for split in TESTS:
        written = np.array([float(r["toy_norm"]) for r in scores if r["split"] == split])
        assert len(written) == 40
        np.testing.assert_allclose(written, norms[split], rtol=1e-12, atol=0)

    table = {row["detector"]: row for row in read_table(tmp_path / "results" / "ood_table.csv")}
    assert {"cae", "msp", "toy_norm"} <= set(table)
    assert table["toy_norm"]["auroc"] == pytest.approx(auroc(norms["test_id"], norms["ood_heldout"]), abs=1e-12)
    assert table["toy_norm"]["n_id"] == table["toy_norm"]["n_ood"] == 40


def test_a_cae_architecture_registered_in_one_line_trains_in_stage_3_and_scores_in_stage_4(
        tiny_heatmaps, tmp_path, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "toy_linear", ToyLinear)
    heatmaps = tiny_heatmaps / "heatmaps"
    cfg = cae_config(heatmaps, tmp_path, "cae.arch=toy_linear", "train.epochs=3",
                     f"test.baseline_scores={tiny_heatmaps / 'results' / 'baseline_scores.csv'}")
    assert "toy_linear" not in cfg["cae"]  # no section: the constructor's defaults
    train_cae.run(cfg)
    score_cae.run(cfg)

    best = torch.load(tmp_path / "cae" / "best.pth", map_location="cpu", weights_only=True)
    assert best["model_args"] == {"arch": "toy_linear", "in_channels": 1, "grid": [4, 4], "zdim": 3}
    assert best["prep"]["norm"] == "max"
    model = ToyLinear(1, (4, 4))
    model.load_state_dict(best["model"])
    model.eval()
    with torch.no_grad():
        expected = np.concatenate([
            ((model(x) - x).double() ** 2).mean(dim=(1, 2, 3)).numpy()
            for x in (_max_normalised(np.load(heatmaps / s / "heatmaps.npy")) for s in TESTS)])
    result = read_recon_errors(tmp_path / "results" / "recon_errors.pkl")
    assert result["split"] == ["test_id"] * 40 + ["ood_heldout"] * 40
    np.testing.assert_allclose(result["errors"], expected, rtol=1e-6, atol=0)
    table = {row["detector"]: row for row in read_table(tmp_path / "results" / "ood_table.csv")}
    assert table["cae"]["auroc"] == pytest.approx(auroc(expected[:40], expected[40:]), abs=1e-9)

    # an argument the constructor refuses is a ConfigError naming its key (load_config takes no key that
    # config.yaml lacks, so a section cae.toy_linear can only be given as a dict)
    with pytest.raises(ConfigError, match=r"^cae\.toy_linear\.zdim must be a positive integer, got 0"):
        check_arch_settings({"arch": "toy_linear", "toy_linear": {"zdim": 0}, "resize": "bilinear", "norm": "max"})
    check_arch_settings({"arch": "toy_linear", "toy_linear": {"zdim": 5}, "resize": "bilinear", "norm": "max"})
