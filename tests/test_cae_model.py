"""ConvAutoencoder: the paper's exact architecture, its multi-channel variant, and input-size checks."""
import json
from pathlib import Path

import pytest
import torch

from wildcapture.cae.architectures import ConvAutoencoder

FIXTURE = Path(__file__).parent / "fixtures" / "paper_cae_state_dict.json"


def test_parameter_count_matches_paper():
    model = ConvAutoencoder(128, 512)
    assert sum(p.numel() for p in model.parameters()) == 2_736_513
    assert model.constructor_args() == {"input_size": 128, "zdim": 512, "in_channels": 1}


def test_strict_load_of_paper_shaped_state_dict():
    reference = json.loads(FIXTURE.read_text())["state_dict"]
    gen = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=gen) for key, shape in reference.items()}
    model = ConvAutoencoder(128, 512)
    model.load_state_dict(state, strict=True)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == reference
    assert torch.equal(model.decoder[15].weight, state["decoder.15.weight"])


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_output_shape_equals_input(size):
    model = ConvAutoencoder(size, zdim=8)
    x = torch.rand(2, 1, size, size)
    assert model(x).shape == x.shape


def test_rebuild_from_constructor_args():
    model = ConvAutoencoder(32, zdim=16)
    clone = ConvAutoencoder(**model.constructor_args())
    clone.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 32, 32)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("size", [0, 8, 24, 100])
def test_input_size_not_multiple_of_16_rejected(size):
    with pytest.raises(ValueError, match="input_size"):
        ConvAutoencoder(size)


def test_wrong_input_shape_names_expected_and_got():
    model = ConvAutoencoder(32, zdim=8)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\).*\(2, 1, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16))


def test_128_state_dict_does_not_load_into_64_model():
    state = ConvAutoencoder(128, 512).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        ConvAutoencoder(64, 512).load_state_dict(state)


@pytest.mark.parametrize("channels", [3, 12])
def test_channels_change_only_the_first_conv_and_the_last_transposed_conv(channels):
    reference = json.loads(FIXTURE.read_text())["state_dict"]
    model = ConvAutoencoder(128, 512, in_channels=channels)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    changed = {k for k in reference if shapes[k] != reference[k]}
    assert shapes.keys() == reference.keys()
    assert changed == {"encoder.0.weight", "decoder.15.weight", "decoder.15.bias"}
    assert shapes["encoder.0.weight"] == [32, channels, 4, 4]
    assert shapes["decoder.15.weight"] == [32, channels, 4, 4] and shapes["decoder.15.bias"] == [channels]
    # 32*4*4 weights per extra input channel, as many per extra output channel, plus one bias each
    extra = (channels - 1) * (2 * 32 * 4 * 4 + 1)
    assert sum(p.numel() for p in model.parameters()) == 2_736_513 + extra


def test_multichannel_output_shape_gradients_and_rebuild():
    model = ConvAutoencoder(16, zdim=8, in_channels=3)
    x = torch.rand(2, 3, 16, 16)
    out = model(x)
    assert out.shape == x.shape
    torch.nn.functional.mse_loss(out, x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.constructor_args() == {"input_size": 16, "zdim": 8, "in_channels": 3}
    clone = ConvAutoencoder(**model.constructor_args())
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\).*\(2, 1, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="in_channels"):
        ConvAutoencoder(16, 8, in_channels=0)
