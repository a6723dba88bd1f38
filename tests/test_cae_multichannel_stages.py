"""Stages 3 and 4 on (N, C, h, w) heatmaps, with the small and the paper CAE: checkpoints, thresholds and
errors agree with an independent computation, and heatmaps that do not fit the CAE are named."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from wildcapture.cae.architectures import build_cae
from wildcapture.cae.engine import ood_threshold
from wildcapture.errors import DatasetError
from wildcapture.stages import score_cae, train_cae
from wildcapture.storage import sha256_file, write_yaml

from stage_helpers import cae_config

SPLITS = ("train_id", "val_id", "test_id", "ood_heldout")
CHANNELS = 3


def _channels(maps):
    """(N, h, w) -> (N, 3, h, w): the map, its square at half scale, and its transpose at 4x scale, so every
    channel has its own maximum."""
    return np.stack([maps, 0.5 * maps ** 2, 4.0 * maps.transpose(0, 2, 1)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def heatmaps4d(tiny_heatmaps, tmp_path_factory):
    """A copy of the tiny stage-2 output whose heatmaps are (N, 3, 4, 4), with its marker updated as stage 2
    writes it for a multi-channel kind (file digests, `splits.<name>.grid` = [C, h, w])."""
    folder = tmp_path_factory.mktemp("stage2-4d") / "heatmaps"
    shutil.copytree(tiny_heatmaps / "heatmaps", folder)
    meta = yaml.safe_load((folder / "heatmaps_meta.yaml").read_text())
    for split in SPLITS:
        path = folder / split / "heatmaps.npy"
        maps = _channels(np.load(path))
        np.save(path, maps)
        meta["files"][f"{split}/heatmaps.npy"] = sha256_file(path)
        meta["splits"][split]["grid"] = list(maps.shape[1:])
    meta["heatmap"]["kind"] = "cls_heads"
    write_yaml(folder / "heatmaps_meta.yaml", meta)
    return folder


def _prepare(raw, size):
    """Independent preparation of raw (N, C, h, w): resize each channel (bilinear) unless size is None, then
    divide each channel of each image by its own max."""
    x = torch.from_numpy(raw)
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x / x.amax(dim=(2, 3), keepdim=True)


def _errors(model, x):
    with torch.no_grad():
        return np.array([((model(x[i:i + 1]) - x[i:i + 1]) ** 2).mean().item() for i in range(len(x))])


ARCHS = {"small": (["cae.arch=small", "cae.small.width=8", "cae.small.zdim=4"], None,
                   {"arch": "small", "in_channels": CHANNELS, "grid": [4, 4], "width": 8, "zdim": 4}),
         "paper": (["cae.paper.zdim=16"], 16, {"arch": "paper", "input_size": 16, "zdim": 16, "in_channels": CHANNELS})}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def trained(request, heatmaps4d, tiny_heatmaps, tmp_path_factory):
    """(arch, output folder) of a 2-epoch stage 3 and a stage 4 on the 3-channel heatmaps."""
    out = tmp_path_factory.mktemp(f"stage34-{request.param}")
    overrides = [*ARCHS[request.param][0], f"test.baseline_scores={tiny_heatmaps / 'results' / 'baseline_scores.csv'}"]
    train_cae.run(cae_config(heatmaps4d, out, *overrides))
    score_cae.run(cae_config(heatmaps4d, out, *overrides))
    return request.param, out


def test_stage_3_checkpoint_and_threshold(trained, heatmaps4d):
    arch, out = trained
    best = torch.load(out / "cae" / "best.pth", map_location="cpu", weights_only=True)
    assert best["model_args"] == ARCHS[arch][2]
    assert best["heatmaps"]["heatmap"]["kind"] == "cls_heads"
    model = build_cae(**best["model_args"])
    model.load_state_dict(best["model"])
    errors = _errors(model.eval(), _prepare(np.load(heatmaps4d / "val_id" / "heatmaps.npy"), ARCHS[arch][1]))
    assert best["val_loss"] == pytest.approx(errors.mean(), rel=1e-5)
    assert best["threshold"] == pytest.approx(ood_threshold(errors, 0.95), rel=1e-5)


def test_stage_4_errors_and_table(trained, heatmaps4d):
    arch, out = trained
    best = torch.load(out / "cae" / "best.pth", map_location="cpu", weights_only=True)
    model = build_cae(**best["model_args"])
    model.load_state_dict(best["model"])
    expected = np.concatenate([_errors(model.eval(), _prepare(np.load(heatmaps4d / s / "heatmaps.npy"), ARCHS[arch][1]))
                               for s in ("test_id", "ood_heldout")])
    with open(out / "results" / "recon_errors.pkl", "rb") as handle:
        result = pickle.load(handle)
    np.testing.assert_allclose(result["errors"], expected, rtol=1e-5)
    rows = json.loads((out / "results" / "ood_table.json").read_text())["rows"]
    assert rows[0]["detector"] == "cae" and rows[0]["n_id"] == rows[0]["n_ood"] == 40
    assert len(rows) > 1  # the baselines of the same stage-2 run
    assert (out / "results" / "reconstruction_gallery.png").stat().st_size > 0


def test_heatmaps_that_do_not_fit_the_cae_are_named(trained, heatmaps4d, tiny_heatmaps, tmp_path):
    arch, out = trained
    # inputs.<key> -> the split folder stage 2 wrote it from (inputs.test_ood: the held-out set)
    singles = {k: str(tiny_heatmaps / "heatmaps" / s / "heatmaps.npy")
               for k, s in (("test_id", "test_id"), ("test_ood", "ood_heldout"))}
    expected = r"\(1, 4, 4\).*\(3, 4, 4\)" if arch == "small" else r"\(1, 16, 16\).*\(3, 16, 16\)"
    with pytest.raises(DatasetError, match=rf"split test_id: heatmaps of shape \(40, 4, 4\) .*{expected}"):
        score_cae.run(cae_config(heatmaps4d, out, *ARCHS[arch][0], f"results_dir={tmp_path / 'results'}",
                                 *(f"inputs.{s}={p}" for s, p in singles.items())))
    assert not (tmp_path / "results" / "recon_errors.pkl").exists()
    # stage 3: a val_id of other channels than train_id is refused before training
    with pytest.raises(DatasetError, match=r"split val_id .*\(40, 4, 4\)"):
        train_cae.run(cae_config(heatmaps4d, tmp_path, *ARCHS[arch][0],
                                 f"inputs.train_id={heatmaps4d / 'train_id' / 'heatmaps.npy'}",
                                 f"inputs.val_id={tiny_heatmaps / 'heatmaps' / 'val_id' / 'heatmaps.npy'}"))
    assert not (tmp_path / "cae" / "best.pth").exists()
