"""Stage 1 on tiny settings: outputs, resume equals an uninterrupted run, clear errors, torchrun DDP."""
import json
import os
import subprocess
import sys

import pytest
import torch

import wildcapture.stages.train_classifier as stage1
from wildcapture.storage import load_checkpoint
from wildcapture.errors import NonFiniteLossError
from wildcapture.cli import stage_main
from wildcapture.paths import REPO_ROOT
from wildcapture.training_run import epoch_summary

from stage_helpers import TINY_VIT, stage1_config

AUGMENTED = ["train.epochs=3", "train.scheduler=step", "train.step_size=1", "model.drop_path_rate=0.1",
             "data.augment.hflip=0.5"]


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_outputs_hold_what_stage_2_needs(tmp_path, capsys):
    stage1.run(stage1_config(tmp_path, "train.epochs=2"))
    assert {p.name for p in tmp_path.iterdir()} >= {"best.pth", "last.pth", "config.yaml", "log.jsonl", "manifest.csv"}
    log = _log(tmp_path)
    printed = capsys.readouterr().out.splitlines()  # the short line per epoch, the full record in log.jsonl
    assert [line for line in printed if line.startswith("epoch ")] == [
        epoch_summary(r["epoch"], 2, {"train_loss": r["train_loss"], "val_loss": r["val_loss"],
                                      "val_acc": r["val_acc"], "best": r["best_val_acc"]}, r["seconds"]) for r in log]
    assert [r["epoch"] for r in log] == [0, 1]
    assert set(log[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["class_names"] == ["0", "1", "2", "3", "4"]
    assert best["model_args"]["num_classes"] == 5 and best["model_args"]["kwargs"]["depth"] == 2
    assert best["val_acc"] == max(r["val_acc"] for r in log)
    assert best["input_spec"]["input_size"] == [8, 8]


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch, capsys):
    stage1.run(stage1_config(tmp_path / "full", *AUGMENTED))
    real_epoch = stage1.train_one_epoch

    def crash_at_epoch_2(*args, **kwargs):
        if args[5] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(stage1, "train_one_epoch", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        stage1.run(stage1_config(tmp_path / "cut", *AUGMENTED))
    # the unfinished run lives in its staging folder, kept for a resume; nothing is published in cut/ yet
    staged = tmp_path / "cut" / ".train_classifier.incomplete"
    assert f"note: the unfinished run stays in {staged}: train.resume=true continues it" in capsys.readouterr().out
    assert [r["epoch"] for r in _log(staged)] == [0, 1]
    assert not (tmp_path / "cut" / "last.pth").exists()
    monkeypatch.setattr(stage1, "train_one_epoch", real_epoch)
    stage1.run(stage1_config(tmp_path / "cut", *AUGMENTED, "train.resume=true"))
    assert f"resuming at epoch 3/3 from {staged / 'last.pth'}\n" in capsys.readouterr().out  # epochs 1-2 done

    full, resumed = load_checkpoint(tmp_path / "full/last.pth"), load_checkpoint(tmp_path / "cut/last.pth")
    assert resumed["epoch"] == 2
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [r["epoch"] for r in _log(tmp_path / "cut")] == [0, 1, 2]
    assert _log(tmp_path / "full")[-1]["val_loss"] == _log(tmp_path / "cut")[-1]["val_loss"]


def test_non_finite_loss_stops_with_a_clear_message_and_leaves_no_folder(tmp_path):
    # it fails in epoch 0: nothing to resume, so neither the staging folder nor the folders created for it stay
    with pytest.raises(NonFiniteLossError, match="non-finite training loss.*at epoch 0.*train.lr"):
        stage1.run(stage1_config(tmp_path / "new" / "vit", "train.epochs=2", "train.lr=1e30", "train.optimizer=sgd"))
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_misspelled_key_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stage_main(REPO_ROOT / "Train_Vit_Classifier" / "config", "stage 1", stage1.__name__, ["train.epoch=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.epoch'" in err and "Did you mean 'train.epochs'" in err


@pytest.mark.e2e
def test_torchrun_with_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO_ROOT / "Train_Vit_Classifier" / "train.py"), *TINY_VIT, f"output_dir={tmp_path}", "train.epochs=2"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(tmp_path)
    assert [r["epoch"] for r in log] == [0, 1]
    assert "2 process(es)" in result.stdout

    # The logged val accuracy (summed over both ranks) equals a single-process evaluation of best.pth.
    from wildcapture.classifier.data_setup import attach_transforms
    from wildcapture.runtime import make_loader
    from wildcapture.classifier.engine import evaluate
    from wildcapture.data.build import build_splits
    from wildcapture.vit import build_vit

    best = load_checkpoint(tmp_path / "best.pth")
    model = build_vit(best["model_args"])
    model.load_state_dict(best["model"])
    bench = build_splits(best["config"]["data"])
    attach_transforms(bench, best["config"]["data"], best["input_spec"])
    loader = make_loader(bench.splits["val_id"], 16, None, 0, torch.device("cpu"))
    assert evaluate(model, loader, torch.device("cpu"), progress=False)["val_acc"] == pytest.approx(best["val_acc"])


def test_empty_validation_split_is_a_clear_error(tmp_path):
    from wildcapture.errors import DatasetError

    with pytest.raises(DatasetError, match="val_id is empty.*data.val_fraction"):
        stage1.run(stage1_config(tmp_path / "vit", "train.epochs=1", "data.val_fraction=0.0"))
    assert not (tmp_path / "vit").exists()
