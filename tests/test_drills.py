"""Drills on whole stages: failed runs over a complete experiment, refused hand-offs, concurrent runs,
kill -9 then a new run and a resume, a moved repository, bad config values."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import wildcapture.paths
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.errors import ConfigError, IncompleteOutputError, NonFiniteLossError, ProvenanceError, RunLockedError
from wildcapture.paths import REPO_ROOT
from wildcapture.run_lock import hold_lock
from wildcapture.stages import evaluate_classifier, score_cae, train_cae, train_classifier

from stage_helpers import TINY_VIT, cae_config, stage1_config, stage2_config


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file of the previous runs under `folders`: the run lock and unfinished runs' staging excluded."""
    files = {}
    for folder in folders:
        for path in folder.rglob("*"):
            parts = path.relative_to(folder).parts
            if path.is_file() and path.name != ".lock" and not any(p.endswith(".incomplete") for p in parts):
                files[str(path)] = path.read_bytes()
    return files


@pytest.fixture
def experiment(tiny_vit_checkpoint, tiny_heatmaps, tiny_cae, tmp_path):
    """A private copy of one complete tiny experiment: vit/, heatmaps/, results/ (stages 2 and 4), cae/."""
    shutil.copytree(tiny_vit_checkpoint.parent, tmp_path / "vit")
    shutil.copytree(tiny_heatmaps / "heatmaps", tmp_path / "heatmaps")
    shutil.copytree(tiny_heatmaps / "results", tmp_path / "results")
    shutil.copytree(tiny_cae / "cae", tmp_path / "cae")
    score_cae.run(_stage34(tmp_path))
    return tmp_path


def _stage34(root: Path, *overrides: str):
    return cae_config(root / "heatmaps", root, f"results_dir={root / 'results'}", "train.epochs=3",
                      f"test.baseline_scores={root / 'results' / 'baseline_scores.csv'}", *overrides)


def test_failed_runs_leave_the_complete_experiment_byte_identical(experiment, monkeypatch):
    root = experiment
    before = snapshot(root)
    # stage 1 stops on a non-finite loss after writing checkpoints of its own
    with pytest.raises(NonFiniteLossError):
        train_classifier.run(stage1_config(root / "vit", "train.epochs=2", "train.lr=1e30", "train.optimizer=sgd"))
    # stage 2 fails half-way through its splits
    real = evaluate_classifier.infer_split_sharded

    def fail_on_test_ood(*args, **kwargs):
        if kwargs.get("desc") == "ood_heldout":
            raise RuntimeError("disk pulled out")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_classifier, "infer_split_sharded", fail_on_test_ood)
    with pytest.raises(RuntimeError, match="disk pulled out"):  # (the copy's classifier path differs: overwrite)
        evaluate_classifier.run(stage2_config(root / "vit" / "best.pth", root, "overwrite=true"))
    monkeypatch.setattr(evaluate_classifier, "infer_split_sharded", real)
    # stage 3 refuses heatmaps whose marker was damaged; stage 4 refuses a CAE of another input size
    damaged = root / "damaged"
    shutil.copytree(root / "heatmaps", damaged)
    (damaged / "heatmaps_meta.yaml").write_bytes(b"")
    with pytest.raises(IncompleteOutputError):
        train_cae.run(_stage34(root, f"heatmaps_dir={damaged}"))
    shutil.rmtree(damaged)
    with pytest.raises(Exception, match="cae.paper.input_size"):
        score_cae.run(_stage34(root, "cae.paper.input_size=32"))
    assert snapshot(root) == before
    assert not [path for stage in ("train_classifier", "evaluate_classifier", "train_cae", "score_cae")
                for path in root.rglob(f".{stage}.incomplete")]  # no failure above completed an epoch


def test_a_heatmap_variant_never_replaces_an_experiment_silently(experiment):
    root = experiment
    before = snapshot(root / "heatmaps")
    with pytest.raises(ProvenanceError, match=r"heatmap.kind 'cls_last'.*with 'rollout'.*exp=NEW_NAME.*overwrite=true"):
        evaluate_classifier.run(stage2_config(root / "vit" / "best.pth", root, "heatmap.kind=rollout"))
    assert snapshot(root / "heatmaps") == before
    # the variant lives beside it ...
    evaluate_classifier.run(stage2_config(root / "vit" / "best.pth", root / "rollout", "heatmap.kind=rollout"))
    # ... and stage 4 refuses to score it with the CAE trained on cls_last heatmaps, naming both kinds
    with pytest.raises(ProvenanceError, match=r"heatmap.kind: 'rollout' vs 'cls_last'"):
        score_cae.run(_stage34(root, f"heatmaps_dir={root / 'rollout' / 'heatmaps'}",
                               f"results_dir={root / 'rollout' / 'results'}"))
    # an explicit overwrite replaces it
    evaluate_classifier.run(stage2_config(root / "vit" / "best.pth", root, "heatmap.kind=rollout", "overwrite=true"))
    assert "kind: rollout" in (root / "heatmaps" / "heatmaps_meta.yaml").read_text()


def test_stage_2_refuses_a_stage_1_folder_without_its_completion_marker(experiment, monkeypatch):
    root = experiment
    monkeypatch.setattr(wildcapture.paths, "REPO_ROOT", root)
    (root / "weights" / "x").mkdir(parents=True)
    shutil.copytree(root / "vit", root / "weights" / "x" / "vit")
    cfg = stage2_config(Path("unused"), root / "x", "checkpoint=null", "exp=x")
    (root / "weights" / "x" / "vit" / "train_classifier.complete.yaml").unlink()  # a commit cut short
    with pytest.raises(IncompleteOutputError, match="train_classifier.complete.yaml.*rerun stage 1"):
        evaluate_classifier.run(cfg)
    shutil.copy(root / "vit" / "train_classifier.complete.yaml", root / "weights" / "x" / "vit")
    (root / "weights" / "x" / "vit" / "best.pth").write_bytes((root / "vit" / "last.pth").read_bytes())
    with pytest.raises(IncompleteOutputError, match="not the file the completed run .* wrote"):
        evaluate_classifier.run(cfg)


def test_one_folder_for_heatmaps_and_results_and_no_gallery(experiment):
    root = experiment
    evaluate_classifier.run(stage2_config(root / "vit" / "best.pth", root, f"heatmaps_dir={root / 'both'}",
                                          f"results_dir={root / 'both'}", "gallery_size=0"))
    score_cae.run(_stage34(root, f"heatmaps_dir={root / 'both'}", f"results_dir={root / 'both'}",
                           f"test.baseline_scores={root / 'both' / 'baseline_scores.csv'}", "test.gallery_size=0"))
    assert (root / "both" / "score_cae.complete.yaml").is_file() and not (root / "both" / "heatmap_gallery.png").exists()


def test_baseline_scores_of_another_stage_2_run_are_refused(experiment):
    root = experiment
    evaluate_classifier.run(stage2_config(root / "vit" / "best.pth", root / "again"))
    with pytest.raises(ProvenanceError, match="comes from stage-2 run .* but the heatmaps come from run"):
        score_cae.run(_stage34(root, f"test.baseline_scores={root / 'again' / 'results' / 'baseline_scores.csv'}"))


def test_stage_2_refuses_data_overrides_it_would_ignore(experiment):
    before = snapshot(experiment)
    for other in ("data.name=cifar10", "data.limit_per_split=30"):
        with pytest.raises(ConfigError, match="data.* is set.*data_from_checkpoint=false"):
            evaluate_classifier.run(stage2_config(experiment / "vit" / "best.pth", experiment, other))
    assert snapshot(experiment) == before
    # the data the classifier was trained on (as reproduce.py passes data.* to every stage) is no conflict
    evaluate_classifier.run(stage2_config(experiment / "vit" / "best.pth", experiment / "same",
                                          "data.limit_per_split=40"))


def test_resume_refuses_a_changed_model_or_optimisation(tmp_path, tiny_heatmaps):
    train_classifier.run(stage1_config(tmp_path / "vit", "train.epochs=2"))  # cosine schedule over 2 epochs
    with pytest.raises(ConfigError, match=r"train.lr=0.001 differs from the run being resumed \(train.lr=0.002"):
        train_classifier.run(stage1_config(tmp_path / "vit", "train.epochs=2", "train.resume=true", "train.lr=1e-3"))
    with pytest.raises(ConfigError, match=r"train.epochs=4 differs .*train.epochs=2"):  # the cosine length
        train_classifier.run(stage1_config(tmp_path / "vit", "train.epochs=4", "train.resume=true"))
    with pytest.raises(ConfigError, match="already finished epoch 1 of train.epochs=2: raise train.epochs"):
        train_classifier.run(stage1_config(tmp_path / "vit", "train.epochs=2", "train.resume=true"))
    cfg = cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=1")
    train_cae.run(cfg)
    for changed, before in (("cae.paper.input_size=32", "cae.paper.input_size=16"), ("train.accept_fraction=0.9",
                                                                          "train.accept_fraction=0.95")):
        with pytest.raises(ConfigError, match=rf"{changed} differs .*{before}"):
            train_cae.run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=2", "train.resume=true",
                                     changed))


def test_a_second_run_on_the_same_folder_stops_at_once(tmp_path):
    out = tmp_path / "vit"
    with hold_lock(out, "stage 1 train_classifier, exp digits"):
        started = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"{out} is in use by another run: pid {os.getpid()}"):
            train_classifier.run(stage1_config(out, "train.epochs=1"))
        assert time.perf_counter() - started < 5
    assert not (out / "best.pth").exists()


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size must be an integer >= 1, got 0"),
    ("train.lr=-1", "train.lr must be a number > 0, got -1"),
    ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
    ("num_workers=-2", "num_workers must be an integer >= 0"),
    ("train.scheduler=linear", "train.scheduler must be one of step, cosine, none"),
])
def test_bad_values_are_refused_before_any_file_is_written(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train_classifier.run(stage1_config(tmp_path / "vit", override))
    assert not (tmp_path / "vit").exists()


def test_a_moved_repository_keeps_its_experiments_usable(tmp_path, monkeypatch, tiny_vit_checkpoint, tiny_heatmaps):
    """Stages 2-3 run in a repository at one path; after moving it, stage 4 and detect.py still work, and a
    changed classifier file is refused."""
    first = tmp_path / "first"
    (first / "weights" / "x").mkdir(parents=True)
    shutil.copytree(tiny_vit_checkpoint.parent, first / "weights" / "x" / "vit")  # with its completion marker
    monkeypatch.setattr(wildcapture.paths, "REPO_ROOT", first)
    evaluate_classifier.run(stage2_config(Path("weights/x/vit/best.pth"), Path("."), "exp=x", "heatmaps_dir=null",
                                          "results_dir=null", "checkpoint=null"))
    train_cae.run(cae_config(Path("data/heatmaps/x"), Path("."), "exp=x", "heatmaps_dir=null", "output_dir=null",
                             "results_dir=null", "train.epochs=1"))

    moved = tmp_path / "moved"
    first.rename(moved)
    monkeypatch.setattr(wildcapture.paths, "REPO_ROOT", moved)
    score_cae.run(cae_config(Path("data/heatmaps/x"), Path("."), "exp=x", "heatmaps_dir=null", "output_dir=null",
                             "results_dir=null"))
    assert (moved / "results" / "x" / "score_cae.complete.yaml").is_file()
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(images / "a.png")
    summary = detect(images, moved / "weights" / "x" / "cae" / "best.pth", tmp_path / "d.csv", DetectOptions(device="cpu"))
    assert summary.scored == 1 and np.isfinite(float(next(iter(csv.DictReader(open(tmp_path / "d.csv"))))["ood_score"]))

    classifier = moved / "weights" / "x" / "vit" / "best.pth"
    state = torch.load(classifier, weights_only=True)
    state["val_acc"] = -1.0  # any change of the file
    torch.save(state, classifier)
    with pytest.raises(ProvenanceError, match="has changed since"):
        detect(images, moved / "weights" / "x" / "cae" / "best.pth", tmp_path / "d.csv", DetectOptions(device="cpu"))


def _stage1_command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "Train_Vit_Classifier" / "train.py"), *TINY_VIT, "device=cpu",
            f"output_dir={out}", "train.epochs=12", "train.scheduler=step", "train.step_size=5", *overrides]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_kill_9_then_a_resume_equals_an_uninterrupted_run_and_a_new_run_starts_afresh(tmp_path):
    # the uninterrupted reference, in this process (one thread, like the subprocesses)
    train_classifier.run(stage1_config(tmp_path / "reference", "train.epochs=12", "train.scheduler=step",
                                       "train.step_size=5"))

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(_stage1_command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged_log = out / ".train_classifier.incomplete" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not staged_log.is_file() or len(staged_log.read_text().splitlines()) < 3):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(staged_log.read_text().splitlines())
    assert 3 <= killed_at < 12 and not (out / "best.pth").exists()
    (out / ".train_classifier.incomplete" / ".last.pth.abc123.tmp").write_bytes(b"a write cut short")

    resumed = _run(_stage1_command(out, "train.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.rglob("*.tmp")) and not (out / ".train_classifier.incomplete").exists()
    logs = [[json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
            for folder in (tmp_path / "reference", out)]
    assert [r["epoch"] for r in logs[1]] == list(range(12))
    assert [r["val_loss"] for r in logs[0]] == [r["val_loss"] for r in logs[1]]
    ours, theirs = (torch.load(folder / "last.pth", weights_only=True)["model"] for folder in (out, tmp_path / "reference"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    # killed again, then a plain new run: the unfinished run is discarded, not resumed
    proc = subprocess.Popen(_stage1_command(out, "train.epochs=30"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    staged_last = out / ".train_classifier.incomplete" / "last.pth"
    deadline = time.time() + 120
    while time.time() < deadline and not staged_last.is_file():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fresh = _run(_stage1_command(out))
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "discarding the unfinished run" in fresh.stdout
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == list(range(12))


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a given size (bytes) at tmp_path/disk; skipped where mounting is not allowed."""
    mounted = []

    def mount(size: int) -> Path:
        point = tmp_path / "disk"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.e2e
def test_a_full_disk_is_one_line_and_leaves_the_previous_results(experiment, small_disk):
    root = experiment
    size = sum(p.stat().st_size for p in (root / "results").iterdir() if p.is_file())
    disk = small_disk(int(size * 1.6) // 4096 * 4096 + 4096)
    score_cae.run(_stage34(root, f"results_dir={disk}"))  # the first run fits
    before = snapshot(disk)
    cmd = [sys.executable, str(REPO_ROOT / "AutoEncoder" / "test_autoencoder.py"),
           *(f"{k}={v}" for k, v in (("heatmaps_dir", root / "heatmaps"), ("output_dir", root / "cae"),
                                     ("results_dir", disk), ("cae.arch", "paper"), ("cae.paper.input_size", 16),
                                     ("device", "cpu"),
                                     ("test.baseline_scores", root / "results" / "baseline_scores.csv")))]
    result = _run(cmd)  # a second run needs room for its new files before it replaces the old ones
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot write {disk}") and "No space left on device" in error
    assert "Traceback" not in result.stderr
    assert snapshot(disk) == before and not list(disk.rglob(".score_cae.incomplete"))
