"""CAE training epoch, per-image reconstruction errors and the OOD threshold."""
import math

import numpy as np
import pytest
import torch

from wildcapture.cae import (
    ConvAutoencoder,
    ood_threshold,
    reconstruct,
    reconstruction_errors,
    train_one_epoch,
)


def _model(size=16, zdim=8, seed=0):
    torch.manual_seed(seed)
    return ConvAutoencoder(size, zdim)


def test_reconstruction_errors_match_direct_computation_for_any_batch_size():
    model = _model()
    x = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        direct = ((model(x).double() - x.double()) ** 2).mean(dim=(1, 2, 3)).numpy()
    model.train()
    for batch_size in (1, 3, 7, 10):
        errors = reconstruction_errors(model, x, batch_size, "cpu")
        assert errors.shape == (10,) and errors.dtype == np.float64
        np.testing.assert_allclose(errors, direct, rtol=1e-5, atol=0)
    assert model.training  # restored after scoring


def test_reconstruct_returns_model_output():
    model = _model().eval()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(reconstruct(model, x, 2, "cpu"), expected)


def test_train_one_epoch_reduces_loss():
    model = _model(seed=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 16, 16, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = reconstruction_errors(model, x, 8, "cpu").mean()
    losses = [train_one_epoch(model, x, optimizer, 8, gen, "cpu", progress=False) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert reconstruction_errors(model, x, 8, "cpu").mean() < before


def test_train_one_epoch_stops_on_non_finite_loss():
    model = _model()
    x = torch.rand(6, 1, 16, 16)
    x[4, 0, 3, 3] = float("nan")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(RuntimeError, match=r"non-finite loss .* epoch 3, step"):
        train_one_epoch(model, x, optimizer, 2, torch.Generator().manual_seed(0), "cpu", progress=False, epoch=3)


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
