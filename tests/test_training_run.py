"""What a training stage's run leaves when it fails with an exception: its staging folder only if it can be
resumed (it holds a last.pth), and no folder of its own making otherwise."""
import pytest

from wildcapture.run_lock import LOCK_NAME
from wildcapture.storage import write_yaml
from wildcapture.training_run import TrainingRun

CFG = {"train": {"resume": False, "epochs": 3}}


class Failure(Exception):
    pass


def _fail(training: TrainingRun, epochs_done: int) -> None:
    """Run `training` until `epochs_done` epochs have saved their last.pth, then fail."""
    with pytest.raises(Failure):
        with training.hold("test run"):
            assert training.start(CFG, set()) is None
            write_yaml(training.path("config.yaml"), {"seed": 0})
            for epoch in range(epochs_done):
                training.save("last.pth", {"epoch": epoch})
            raise Failure


def test_a_failure_before_the_first_epoch_leaves_no_folder_it_created(tmp_path, capsys):
    _fail(TrainingRun(tmp_path / "weights" / "x" / "vit", "train_classifier"), epochs_done=0)
    assert list(tmp_path.iterdir()) == [] and "note:" not in capsys.readouterr().out


def test_a_failure_before_the_first_epoch_leaves_an_existing_folder_as_it_was(tmp_path):
    out = tmp_path / "vit"
    out.mkdir()
    (out / "best.pth").write_bytes(b"the previous complete run's")
    _fail(TrainingRun(out, "train_classifier"), epochs_done=0)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "best.pth"]
    assert (out / "best.pth").read_bytes() == b"the previous complete run's"


def test_a_failure_after_an_epoch_keeps_the_staged_run_for_a_resume(tmp_path, capsys):
    training = TrainingRun(tmp_path / "vit", "train_cae")
    _fail(training, epochs_done=2)
    assert sorted(p.name for p in training.staging.dir.iterdir()) == ["config.yaml", "last.pth"]
    assert capsys.readouterr().out.endswith(
        f"note: the unfinished run stays in {training.staging.dir}: train.resume=true continues it from its last "
        "completed epoch\n")


def test_a_killed_run_stays_resumable_after_a_failure_before_the_next_run_starts(tmp_path):
    training = TrainingRun(tmp_path / "vit", "train_classifier")
    training.staging.reset()
    training.save("last.pth", {"epoch": 4})  # what a kill -9 after epoch 5 leaves
    with pytest.raises(Failure):
        with training.hold("test run"):
            raise Failure  # e.g. a data check, before `start` would discard or resume it
    assert (training.staging.dir / "last.pth").is_file()
