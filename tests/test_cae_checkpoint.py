"""CAE checkpoints of both architectures: round trips, the config checks, older files, and the detector."""
import numpy as np
import pytest
import torch

from wildcapture.cae.engine import reconstruction_errors
from wildcapture.cae.heatmap_data import HeatmapPrep
from wildcapture.cae.architectures import ConvAutoencoder
from wildcapture.cae.architectures import SmallAutoencoder
from wildcapture.cae.architectures import model_args
from wildcapture.cae.checkpoint import CAE_FORMAT, load_cae
from wildcapture.cae.engine import CAEDetector
from wildcapture.config import load_config
from wildcapture.errors import CheckpointError, DatasetError, WeightsMismatchError
from wildcapture.paths import REPO_ROOT
from wildcapture.storage import sha256_file


def _cae_cfg(*overrides):
    return load_config(REPO_ROOT / "AutoEncoder" / "config", None, ["cae.arch=paper", *overrides])["cae"]


def _save(path, model, prep=None, **extra):
    """Write `model` as stage 3 does (format, model_args, prep, weights); returns path."""
    torch.save({"format": CAE_FORMAT, "model_args": model_args(model),
                "prep": prep or {"resize": "bilinear", "norm": "max"}, "model": model.state_dict(), **extra}, path)
    return path


def _same_weights(a, b):
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_paper_round_trip_with_channels(tmp_path):
    torch.manual_seed(0)
    model = ConvAutoencoder(16, 8, in_channels=3)
    path = _save(tmp_path / "paper.pth", model, threshold=0.5)
    loaded, meta = load_cae(path, _cae_cfg("cae.paper.input_size=16", "cae.paper.zdim=8"))
    assert isinstance(loaded, ConvAutoencoder) and loaded.constructor_args() == model.constructor_args()
    assert _same_weights(loaded, model) and not loaded.training
    assert meta["model_args"] == {"arch": "paper", "input_size": 16, "zdim": 8, "in_channels": 3}
    assert meta["threshold"] == 0.5 and meta["path"] == str(path)


def test_small_round_trip_ignores_input_size_and_resize(tmp_path):
    torch.manual_seed(0)
    model = SmallAutoencoder(16, (4, 4), width=8, zdim=4)
    path = _save(tmp_path / "small.pth", model)
    cfg = _cae_cfg("cae.arch=small", "cae.small.width=8", "cae.small.zdim=4", "cae.paper.input_size=48",
                   "cae.resize=nearest")
    loaded, meta = load_cae(path, cfg)
    assert isinstance(loaded, SmallAutoencoder) and loaded.input_shape == (16, 4, 4)
    assert _same_weights(loaded, model)
    x = torch.rand(2, 16, 4, 4)
    model.eval()
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("overrides, key, saved, configured", [
    (["cae.arch=small"], "arch", "paper", "small"),
    (["cae.paper.zdim=16"], "paper.zdim", 8, 16),
    (["cae.paper.input_size=32"], "paper.input_size", 16, 32),
    (["cae.norm=minmax"], "norm", "max", "minmax"),
])
def test_config_mismatch_with_a_paper_checkpoint_names_key_and_values(tmp_path, overrides, key, saved, configured):
    path = _save(tmp_path / "paper.pth", ConvAutoencoder(16, 8))
    cfg = _cae_cfg("cae.paper.input_size=16", "cae.paper.zdim=8", *overrides)
    with pytest.raises(WeightsMismatchError, match=rf"cae\.{key}={saved} but the config has cae\.{key}={configured}"):
        load_cae(path, cfg)


@pytest.mark.parametrize("overrides, key, saved, configured", [
    (["cae.arch=paper"], "arch", "small", "paper"),
    (["cae.small.width=16"], "small.width", 8, 16),
    (["cae.small.zdim=2"], "small.zdim", 4, 2),
])
def test_config_mismatch_with_a_small_checkpoint_names_key_and_values(tmp_path, overrides, key, saved, configured):
    path = _save(tmp_path / "small.pth", SmallAutoencoder(2, (4, 4), width=8, zdim=4))
    cfg = _cae_cfg("cae.arch=small", "cae.small.width=8", "cae.small.zdim=4", *overrides)
    with pytest.raises(WeightsMismatchError, match=rf"cae\.{key}={saved} but the config has cae\.{key}={configured}"):
        load_cae(path, cfg)


def test_checkpoint_from_before_arch_loads_as_the_one_channel_paper_cae(tmp_path):
    model = ConvAutoencoder(16, 8)
    torch.save({"format": CAE_FORMAT, "model_args": {"input_size": 16, "zdim": 8},
                "prep": {"resize": "bilinear", "norm": "max"}, "model": model.state_dict()}, tmp_path / "old.pth")
    loaded, _ = load_cae(tmp_path / "old.pth", _cae_cfg("cae.paper.input_size=16", "cae.paper.zdim=8"))
    assert isinstance(loaded, ConvAutoencoder) and loaded.input_shape == (1, 16, 16)
    assert _same_weights(loaded, model)
    with pytest.raises(WeightsMismatchError, match=r"cae\.arch=paper"):
        load_cae(tmp_path / "old.pth", _cae_cfg("cae.arch=small"))


def test_bare_state_dict_gives_its_channel_count(tmp_path):
    model = ConvAutoencoder(32, 8, in_channels=4)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    loaded, meta = load_cae(tmp_path / "bare.pt")
    assert loaded.constructor_args() == {"input_size": 32, "zdim": 8, "in_channels": 4}
    assert _same_weights(loaded, model) and meta == {"path": str(tmp_path / "bare.pt"),
                                                     "sha256": sha256_file(tmp_path / "bare.pt")}


def test_unknown_or_broken_model_args_are_checkpoint_errors(tmp_path):
    state = SmallAutoencoder(1, (4, 4)).state_dict()
    torch.save({"format": CAE_FORMAT, "model_args": {"arch": "huge", "in_channels": 1}, "model": state},
               tmp_path / "huge.pth")
    with pytest.raises(CheckpointError, match="huge.*paper, small"):
        load_cae(tmp_path / "huge.pth")
    torch.save({"format": CAE_FORMAT, "model_args": {"arch": "small", "in_channels": 1, "grid": [4, 4], "depth": 3},
                "model": state}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="depth"):
        load_cae(tmp_path / "cut.pth", _cae_cfg("cae.arch=small"))


def test_small_checkpoint_weights_of_another_grid_do_not_fit(tmp_path):
    obj = {"format": CAE_FORMAT, "model_args": model_args(SmallAutoencoder(1, (5, 5))),
           "model": SmallAutoencoder(1, (4, 4)).state_dict()}
    torch.save(obj, tmp_path / "grid.pth")
    with pytest.raises(WeightsMismatchError, match="size mismatch"):
        load_cae(tmp_path / "grid.pth")


def test_detector_scores_multichannel_heatmaps_and_names_a_shape_that_does_not_fit():
    torch.manual_seed(0)
    maps = np.random.default_rng(0).random((5, 3, 4, 4)).astype(np.float32)
    small = CAEDetector(SmallAutoencoder(3, (4, 4)).eval(), "bilinear", "minmax", batch_size=2)
    assert small.prep == HeatmapPrep(None, "bilinear", "minmax")
    np.testing.assert_array_equal(small.score(maps),
                                  reconstruction_errors(small.model, torch.from_numpy(maps), small.prep, 2, "cpu"))
    assert small.prepare(maps).shape == (5, 3, 4, 4)
    shapes = r"heatmaps of shape \(5, 3, 5, 5\).*\(3, 5, 5\).*\(3, 4, 4\)"
    with pytest.raises(DatasetError, match=rf"split test_ood: {shapes}"):
        small.score(np.zeros((5, 3, 5, 5), np.float32), "split test_ood")
    paper = CAEDetector(ConvAutoencoder(16, 8).eval(), "bilinear", "max")
    assert paper.prep == HeatmapPrep(16, "bilinear", "max") and paper.score(maps[:, 0]).shape == (5,)
    with pytest.raises(DatasetError, match=r"\(3, 16, 16\).*\(1, 16, 16\)"):
        paper.score(maps)
