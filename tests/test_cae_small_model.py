"""SmallAutoencoder: the compact CAE at the heatmap's native grid, for any grid and channel count."""
import pytest
import torch
import torch.nn.functional as F

from wildcapture.cae.architectures import build_cae
from wildcapture.cae.architectures import SmallAutoencoder
from wildcapture.cae.architectures import model_args

GRIDS = [(4, 4), (7, 7), (14, 14), (5, 3)]


def _expected_parameters(channels, h, w, width, zdim):
    """Parameters counted by hand: conv C->width, conv width->width, linear width*h*w->zdim, linear back,
    conv width->width, conv width->C (3x3 kernels, every layer with a bias)."""
    cells = width * h * w
    convs = (9 * channels * width + width) + 2 * (9 * width * width + width) + (9 * width * channels + channels)
    return convs + (cells * zdim + zdim) + (zdim * cells + cells)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("channels", [1, 3, 12])
def test_output_has_the_input_shape_and_every_parameter_gets_a_gradient(grid, channels):
    torch.manual_seed(0)
    model = SmallAutoencoder(channels, grid)
    x = torch.rand(3, channels, *grid)
    out = model(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    F.mse_loss(out, x).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert sum(p.numel() for p in model.parameters()) == _expected_parameters(channels, *grid, 32, 8)


def test_parameter_count_for_the_digits_grid():
    # digits ViT: 4x4 grid, depth 4, 4 heads -> cls_last 1 channel, cls_heads 4, cls_all 16
    counts = {c: sum(p.numel() for p in SmallAutoencoder(c, (4, 4)).parameters()) for c in (1, 4, 16)}
    assert counts == {1: 27_817, 4: 29_548, 16: 36_472}


def test_it_overfits_a_handful_of_maps():
    torch.manual_seed(0)
    model = SmallAutoencoder(3, (7, 7))
    x = torch.rand(4, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = F.mse_loss(model(x), x).item()
    for _ in range(100):
        loss = F.mse_loss(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = F.mse_loss(model(x), x).item()
    assert after < before / 100


def test_rebuild_from_model_args():
    model = SmallAutoencoder(5, (7, 6), width=8, zdim=4)
    args = model_args(model)
    assert args == {"arch": "small", "in_channels": 5, "grid": [7, 6], "width": 8, "zdim": 4}
    clone = build_cae(**args)
    assert isinstance(clone, SmallAutoencoder)
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 5, 7, 6)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))
    assert clone.input_shape == (5, 7, 6) and clone.resize_to is None


def test_wrong_input_shape_names_expected_and_got():
    model = SmallAutoencoder(4, (4, 4))
    with pytest.raises(ValueError, match=r"\(N, 4, 4, 4\).*\(2, 4, 5, 5\)"):
        model(torch.rand(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(N, 4, 4, 4\).*\(2, 1, 4, 4\)"):
        model(torch.rand(2, 1, 4, 4))


@pytest.mark.parametrize("kwargs, key", [({"in_channels": 0}, "in_channels"), ({"grid": (4, 0)}, "grid"),
                                         ({"grid": (4,)}, "grid"), ({"width": 0}, "width"), ({"zdim": 1.5}, "zdim")])
def test_bad_arguments_are_named(kwargs, key):
    with pytest.raises(ValueError, match=key):
        SmallAutoencoder(**{"in_channels": 1, "grid": (4, 4), **kwargs})


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="paper, small"):
        build_cae("large")


def test_config_checks_of_the_architecture_keys():
    from wildcapture.cae.settings import check_cae_settings
    from wildcapture.config import load_config
    from wildcapture.errors import ConfigError
    from wildcapture.paths import REPO_ROOT

    def cae(*overrides):
        return load_config(REPO_ROOT / "AutoEncoder" / "config", None, ["cae.arch=paper", *overrides])["cae"]

    assert cae()["arch"] == "paper"
    check_cae_settings(cae("cae.arch=small", "cae.paper.input_size=30"))  # input_size is ignored by the small CAE
    with pytest.raises(ConfigError, match="cae.paper.input_size must be a positive multiple of 16, got 30"):
        check_cae_settings(cae("cae.paper.input_size=30"))
    with pytest.raises(ConfigError, match="cae.arch must be one of paper, small; got 'tiny'"):
        check_cae_settings(cae("cae.arch=tiny"))
    for key, bad in (("small.width", 0), ("small.width", 2048), ("small.zdim", 0), ("small.zdim", 5000)):
        with pytest.raises(ConfigError, match=f"cae.{key} must be a positive integer.*got {bad}"):
            check_cae_settings(cae("cae.arch=small", f"cae.{key}={bad}"))
