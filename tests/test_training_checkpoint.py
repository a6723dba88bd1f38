"""The one checkpoint writer and restorer of stages 1 and 3: an fp16 resume continues with the loss scale,
moments and learning rate the interrupted run had reached."""
import torch

from wildcapture.runtime import grad_scaler
from wildcapture.storage import load_checkpoint, save_checkpoint
from wildcapture.training_checkpoint import TrainingState

INIT_SCALE = 2.0 ** 10
EXTRAS = {"model_args": {"width": 4}, "best_val_loss": 0.25, "stale_epochs": 1}
CONFIG = {"seed": 3, "train": {"lr": 0.1}}


def _fresh_state(seed: int = 0) -> TrainingState:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return TrainingState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", init_scale=INIT_SCALE))


def _step(state: TrainingState, batch: torch.Tensor, poison: bool = False) -> None:
    """One fp16-style step; `poison` makes a gradient infinite, so the scaler skips it and halves its scale."""
    state.optimizer.zero_grad()
    state.scaler.scale(state.model(batch).square().mean()).backward()
    if poison:
        state.model.weight.grad[0, 0] = float("inf")
    state.scaler.step(state.optimizer)
    state.scaler.update()


def _trained_state() -> TrainingState:
    state = _fresh_state()
    batch = torch.linspace(-1, 1, 12).reshape(3, 4)
    _step(state, batch, poison=True)  # scale 1024 -> 512, no update of the weights
    _step(state, batch)  # a good step: Adam moments, growth tracker 0 -> 1
    state.scheduler.step()
    return state


def _assert_same_tensors(ours, theirs):
    if isinstance(ours, torch.Tensor):
        assert torch.equal(ours, theirs)
    elif isinstance(ours, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            _assert_same_tensors(ours[key], theirs[key])
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs)
        for one, other in zip(ours, theirs):
            _assert_same_tensors(one, other)
    else:
        assert ours == theirs


def test_an_fp16_resume_restores_the_loss_scale_and_the_optimisation(tmp_path):
    saved = _trained_state()
    assert (saved.scaler.get_scale(), saved.scaler.state_dict()["_growth_tracker"]) == (INIT_SCALE / 2, 1)
    save_checkpoint(saved.checkpoint(4, CONFIG, EXTRAS, resumable=True), tmp_path / "last.pth")

    restored = _fresh_state(seed=1)  # other initial weights
    fresh_scaler = restored.scaler.state_dict()
    start_epoch, extras = restored.restore(load_checkpoint(tmp_path / "last.pth"))

    assert (start_epoch, extras) == (5, EXTRAS)
    assert restored.scaler.get_scale() == saved.scaler.get_scale() == 512.0 != fresh_scaler["scale"]
    assert restored.scaler.state_dict()["_growth_tracker"] == saved.scaler.state_dict()["_growth_tracker"] == 1
    assert fresh_scaler["_growth_tracker"] == 0
    _assert_same_tensors(restored.model.state_dict(), saved.model.state_dict())
    _assert_same_tensors(restored.optimizer.state_dict(), saved.optimizer.state_dict())
    assert restored.scheduler.state_dict() == saved.scheduler.state_dict()
    assert restored.optimizer.param_groups[0]["lr"] == 0.05

    # and the next step, skipped by both for the same infinite gradient, backs both off to the same scale
    batch = torch.ones(2, 4)
    for state in (saved, restored):
        _step(state, batch, poison=True)
        _step(state, batch)
    assert restored.scaler.get_scale() == saved.scaler.get_scale() == 256.0
    _assert_same_tensors(restored.model.state_dict(), saved.model.state_dict())


def test_a_checkpoint_holds_the_stage_entries_and_only_a_resumable_one_the_optimisation():
    state = _trained_state()
    best = state.checkpoint(2, CONFIG, EXTRAS)
    assert list(best) == [*EXTRAS, "config", "model", "epoch"]
    assert best["epoch"] == 2 and best["config"] is CONFIG
    last = state.checkpoint(2, CONFIG, EXTRAS, resumable=True)
    assert list(last) == [*EXTRAS, "config", "model", "epoch", "optimizer", "scheduler", "scaler"]
    no_scheduler = TrainingState(state.model, state.optimizer, scaler=state.scaler)  # stage 3: no LR schedule
    assert "scheduler" not in no_scheduler.checkpoint(2, CONFIG, EXTRAS, resumable=True)
    assert state.restore(None) == (0, {})


def test_a_disabled_scaler_saves_and_restores_harmlessly(tmp_path):
    path, fresh = tmp_path / "last.pth", _fresh_state().scaler.state_dict()
    # saved without loss scaling (the CPU's scaler is disabled: {}), resumed with it (fp16): the fresh scale stays
    saved = _trained_state()
    saved.scaler = grad_scaler(torch.device("cpu"), amp=False)
    save_checkpoint(saved.checkpoint(0, CONFIG, {}, resumable=True), path)
    assert load_checkpoint(path)["scaler"] == {}
    restored = _fresh_state()
    assert restored.restore(load_checkpoint(path)) == (1, {})
    assert restored.scaler.state_dict() == fresh
    _assert_same_tensors(restored.model.state_dict(), saved.model.state_dict())

    # saved with loss scaling, resumed without it: the saved scale is ignored
    save_checkpoint(_trained_state().checkpoint(0, CONFIG, {}, resumable=True), path)
    restored = _fresh_state()
    restored.scaler = grad_scaler(torch.device("cpu"), amp=False)
    assert restored.restore(load_checkpoint(path)) == (1, {})
    assert not restored.scaler.is_enabled() and restored.scaler.state_dict() == {}
