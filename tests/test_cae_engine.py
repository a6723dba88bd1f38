"""CAE training epoch, per-image reconstruction errors and the OOD threshold."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wildcapture.cae.engine import ood_threshold, reconstruct, reconstruction_errors, train_one_epoch
from wildcapture.cae.heatmap_data import HeatmapPrep, prepare_heatmaps
from wildcapture.cae.architectures import ConvAutoencoder
from wildcapture.cae.architectures import SmallAutoencoder

PREP = HeatmapPrep(16, "bilinear", "max")


def _model(size=16, zdim=8, seed=0):
    torch.manual_seed(seed)
    return ConvAutoencoder(size, zdim)


def _maps(n, side=6, seed=0):
    """n raw heatmaps (n, side, side) in [0.1, 1.1): no all-zero map."""
    return torch.rand(n, side, side, generator=torch.Generator().manual_seed(seed)) + 0.1


def test_reconstruction_errors_match_direct_computation_for_any_batch_size():
    model = _model()
    maps = _maps(10)
    x = prepare_heatmaps(maps, 16)
    model.eval()
    with torch.no_grad():
        direct = ((model(x).double() - x.double()) ** 2).mean(dim=(1, 2, 3)).numpy()
    model.train()
    for batch_size in (1, 3, 7, 10):
        errors = reconstruction_errors(model, maps, PREP, batch_size, "cpu")
        assert errors.shape == (10,) and errors.dtype == np.float64
        np.testing.assert_allclose(errors, direct, rtol=1e-5, atol=0)
    assert model.training  # restored after scoring


def test_reconstruct_returns_model_output_of_the_prepared_heatmaps():
    model = _model().eval()
    maps = _maps(5)
    with torch.no_grad():
        expected = model(prepare_heatmaps(maps, 16))
    torch.testing.assert_close(reconstruct(model, maps, PREP, 2, "cpu"), expected)
    assert reconstruct(model, maps[:0], PREP, 2, "cpu").shape == (0, 1, 16, 16)


def test_train_one_epoch_reduces_loss():
    model = _model(seed=1)
    gen = torch.Generator().manual_seed(0)
    maps = _maps(24)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = reconstruction_errors(model, maps, PREP, 8, "cpu").mean()
    losses = [train_one_epoch(model, maps, PREP, optimizer, 8, gen, "cpu", progress=False) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert reconstruction_errors(model, maps, PREP, 8, "cpu").mean() < before


def test_train_one_epoch_stops_on_non_finite_loss():
    model = _model()
    maps = _maps(6)
    maps[4, 3, 3] = float("nan")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for norm in ("none", "max"):  # normalising keeps the NaN: a bad map is not hidden as zeros
        with pytest.raises(RuntimeError, match=r"non-finite loss .* epoch 3, step"):
            train_one_epoch(model, maps, HeatmapPrep(16, "bilinear", norm), optimizer, 6, None, "cpu",
                            progress=False, epoch=3)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # stopped before the step


def test_multichannel_errors_are_the_mean_over_channels_and_pixels():
    maps = torch.rand(7, 3, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.manual_seed(0)
    for model, prep in ((ConvAutoencoder(16, 8, in_channels=3).eval(), PREP),
                        (SmallAutoencoder(3, (6, 6)).eval(), HeatmapPrep(None, "bilinear", "max"))):
        errors = reconstruction_errors(model, maps, prep, 3, "cpu")
        recon = reconstruct(model, maps, prep, 3, "cpu")
        side = 16 if prep.size else 6
        assert recon.shape == (7, 3, side, side)
        expected = []
        for i in range(7):  # one image at a time, every channel normalised by its own max
            x = prepare_heatmaps(maps[i:i + 1], prep.size)
            assert torch.equal(x[0, 1], prepare_heatmaps(maps[i:i + 1, 1], prep.size)[0, 0])
            with torch.no_grad():
                expected.append(sum(((model(x) - x)[0, c] ** 2).mean().item() for c in range(3)) / 3)
        np.testing.assert_allclose(errors, expected, rtol=1e-5)
        assert reconstruct(model, maps[:0], prep, 3, "cpu").shape == (0, 3, side, side)


def test_train_one_epoch_trains_the_small_cae_on_multichannel_maps():
    torch.manual_seed(1)
    model = SmallAutoencoder(4, (5, 5))
    maps, prep = torch.rand(24, 4, 5, 5, generator=torch.Generator().manual_seed(0)), HeatmapPrep(None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = reconstruction_errors(model, maps, prep, 8, "cpu").mean()
    gen = torch.Generator().manual_seed(0)
    losses = [train_one_epoch(model, maps, prep, optimizer, 8, gen, "cpu", progress=False) for _ in range(10)]
    assert losses[-1] < losses[0] / 2
    assert reconstruction_errors(model, maps, prep, 8, "cpu").mean() < before / 2


def _reference_prepare(maps, size, resize, norm):
    """Stage 3 before per-batch preparation, written out: every map resized up front, then normalised
    by its max (norm "max") or to [0, 1] (norm "minmax"). Returns (N, 1, size, size)."""
    mode = {"bilinear": "bilinear", "nearest": "nearest-exact"}[resize]
    x = F.interpolate(maps[:, None], size=(size, size), mode=mode,
                      **({"align_corners": False} if resize == "bilinear" else {}))
    hi = x.amax(dim=(2, 3), keepdim=True)
    if norm == "max":
        return x / hi
    lo = x.amin(dim=(2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


def _reference_epoch(model, x, optimizer, batch_size, generator):
    """The former training loop over a prepared tensor x (N, 1, S, S): one randperm, index_select batches,
    MSE, Adam. Returns the epoch's mean loss weighted by batch size."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x.index_select(0, order[start:start + batch_size])
        loss = F.mse_loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x)


@pytest.mark.parametrize("resize, norm", [("bilinear", "max"), ("nearest", "minmax")])
def test_per_batch_preparation_trains_and_scores_exactly_like_preparing_everything_first(resize, norm):
    maps, prep = _maps(21), HeatmapPrep(16, resize, norm)  # 21: the last batch of 8 is partial
    x = _reference_prepare(maps, 16, resize, norm)
    ours, theirs = _model(), _model()
    ours_opt, theirs_opt = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ours, theirs))
    for epoch in range(2):
        ours_loss = train_one_epoch(ours, maps, prep, ours_opt, 8, torch.Generator().manual_seed(epoch), "cpu",
                                    progress=False)
        assert ours_loss == _reference_epoch(theirs, x, theirs_opt, 8, torch.Generator().manual_seed(epoch))
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    for ours_state, theirs_state in zip(ours_opt.state.values(), theirs_opt.state.values()):
        assert all(torch.equal(ours_state[k], theirs_state[k]) for k in theirs_state)

    theirs.eval()
    with torch.no_grad():  # the former scoring: batches of 5 of the prepared tensor
        expected = torch.cat([((theirs(b).double() - b.double()) ** 2).mean(dim=(1, 2, 3)) for b in x.split(5)])
    errors = reconstruction_errors(ours, maps, prep, 5, "cpu")
    np.testing.assert_array_equal(errors, expected.numpy())
    assert ood_threshold(errors) == ood_threshold(expected.numpy())


def test_ood_threshold_accepts_fraction_of_val():
    errors = np.arange(1, 21, dtype=np.float64)[::-1].copy()
    threshold = ood_threshold(errors, 0.95)
    assert threshold == 19.0
    assert (errors <= threshold).mean() == 0.95
    assert ood_threshold(errors, 1.0) == 20.0
    assert ood_threshold(np.array([0.5]), 0.95) == 0.5
    # at least the fraction is accepted when it does not divide N
    errors = np.random.default_rng(0).random(37)
    assert (errors <= ood_threshold(errors, 0.9)).mean() >= 0.9


def test_ood_threshold_rejects_bad_input():
    with pytest.raises(ValueError):
        ood_threshold(np.array([]))
    with pytest.raises(ValueError):
        ood_threshold(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        ood_threshold(np.array([1.0]), 0.0)
