"""EpochSampler: reproducible per epoch, class-balanced on request, disjoint DDP shards."""
import numpy as np

from wildcapture.classifier.sampler import EpochSampler, class_balanced_weights


def test_same_epoch_same_order_and_epochs_differ():
    labels = np.arange(50) % 3
    a, b = EpochSampler(labels, shuffle=True, seed=1), EpochSampler(labels, shuffle=True, seed=1)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)


def test_balanced_weights_and_draws():
    labels = np.array([0] * 90 + [1] * 10)
    weights = class_balanced_weights(labels).numpy()
    assert np.allclose(weights[:90], 1 / 90) and np.allclose(weights[90:], 1 / 10)
    sampler = EpochSampler(np.tile(labels, 20), shuffle=True, balanced=True)
    drawn = np.tile(labels, 20)[list(sampler)]
    assert abs(drawn.mean() - 0.5) < 0.05  # class 1 is 10% of the data but half of the draws


def test_ddp_shards_cover_training_epoch_evenly_and_eval_without_duplicates():
    labels = np.zeros(11, dtype=int)
    shards = [list(EpochSampler(labels, shuffle=True, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11))
    evals = [list(EpochSampler(labels, shuffle=False, rank=r, world_size=2, pad=False)) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(11))
    assert [len(EpochSampler(labels, shuffle=False, rank=r, world_size=2, pad=False)) for r in range(2)] == [6, 5]
