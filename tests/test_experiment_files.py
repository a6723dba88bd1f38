"""The owner of the experiment's files: staged commits, completion markers, run locks, stale temporary files,
config range checks and resume checks."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from wildcapture.config_checks import check_choice, check_number, check_positive_ints
from wildcapture.errors import ConfigError, IncompleteOutputError, RunLockedError
from wildcapture.storage import Staging, read_marker, verify_file
from wildcapture.paths import REPO_ROOT
from wildcapture.provenance import check_resume_config
from wildcapture.run_lock import hold_lock
from wildcapture.storage import remove_stale_temporaries, sha256_file


def _commit(folder, files, stage="s", **marker):
    with Staging(folder, stage, f"{stage}.complete.yaml") as staging:
        for name, text in files.items():
            staging.path(name).write_text(text)
        return staging.commit(marker)


def test_commit_replaces_files_removes_the_old_runs_extras_and_writes_the_marker_last(tmp_path):
    _commit(tmp_path, {"a.txt": "old a", "sub/b.txt": "old b", "png/1.png": "old png"}, run_id="one")
    (tmp_path / "user_notes.txt").write_text("not ours")
    marker = _commit(tmp_path, {"a.txt": "new a", "sub/b.txt": "new b"}, run_id="two")

    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "sub/b.txt").read_text() == "new b"
    assert not (tmp_path / "png/1.png").exists()  # listed by the old marker, not produced again
    assert (tmp_path / "user_notes.txt").read_text() == "not ours"  # never listed: left alone
    assert not (tmp_path / ".s.incomplete").exists()
    assert marker["files"] == {"a.txt": sha256_file(tmp_path / "a.txt"), "sub/b.txt": sha256_file(tmp_path / "sub/b.txt")}
    assert read_marker(tmp_path / "s.complete.yaml", ("run_id",))["run_id"] == "two"
    assert list(yaml.safe_load((tmp_path / "s.complete.yaml").read_text()))[-1] == "complete"


def test_a_failure_inside_the_staging_block_leaves_the_folder_untouched(tmp_path):
    _commit(tmp_path, {"a.txt": "kept"}, run_id="one")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError):
        with Staging(tmp_path, "s", "s.complete.yaml") as staging:
            staging.path("a.txt").write_text("half-made")
            raise RuntimeError("the run failed")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_every_cut_of_a_marker_reads_as_incomplete(tmp_path):
    _commit(tmp_path, {"a.txt": "x", "b.txt": "y"}, run_id="r1", heatmap={"kind": "cls_last"})
    path = tmp_path / "s.complete.yaml"
    full = path.read_bytes()
    assert read_marker(path, ("run_id", "heatmap"))
    for cut in range(len(full) - 1):  # every strict prefix of the file (the last byte is the newline)
        path.write_bytes(full[:cut])
        with pytest.raises(IncompleteOutputError):
            read_marker(path, ("run_id", "heatmap"))
    path.write_bytes(b"")
    with pytest.raises(IncompleteOutputError, match="empty"):
        read_marker(path)
    path.unlink()
    with pytest.raises(IncompleteOutputError, match="is missing"):
        read_marker(path)


def test_verify_file_refuses_a_changed_or_unlisted_file(tmp_path):
    marker = _commit(tmp_path, {"a.txt": "x"})
    assert verify_file(marker, tmp_path, "a.txt") == tmp_path / "a.txt"
    (tmp_path / "a.txt").write_text("changed")
    with pytest.raises(IncompleteOutputError, match="has changed since"):
        verify_file(marker, tmp_path, "a.txt", "stage 9")
    with pytest.raises(IncompleteOutputError, match="not listed"):
        verify_file(marker, tmp_path, "b.txt")


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with hold_lock(tmp_path, "stage 1 train_classifier"):
        with pytest.raises(RunLockedError, match=rf"in use by another run: pid {os.getpid()} .*stage 1 train_classifier"):
            with hold_lock(tmp_path, "stage 1 again"):
                pass
    with hold_lock(tmp_path, "afterwards"):  # released at the end of the block
        pass


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    code = ("import sys, time; from wildcapture.run_lock import hold_lock\n"
            f"with hold_lock(__import__('pathlib').Path({str(tmp_path)!r}), 'doomed'):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            with hold_lock(tmp_path, "too early"):
                pass
    finally:
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait()
    started = time.perf_counter()
    with hold_lock(tmp_path, "after the kill"):
        assert time.perf_counter() - started < 1


def test_a_forked_child_that_outlives_a_killed_run_does_not_hold_its_lock(tmp_path):
    code = ("import os, time; from wildcapture.run_lock import hold_lock\n"
            f"with hold_lock(__import__('pathlib').Path({str(tmp_path)!r}), 'doomed'):\n"
            "    if os.fork() == 0:\n"  # a DataLoader worker, say, that lives on after its parent is killed
            "        time.sleep(60); os._exit(0)\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        proc.kill()  # the parent only: the child sleeps on
        proc.wait()
        with hold_lock(tmp_path, "after the kill"):
            pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".best.pth.k2j3h.tmp", tmp_path / "sub" / ".index.csv.x9.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / "best.pth").write_bytes(b"whole")
    other = tmp_path / ".detections.csv.incomplete"  # another run's folder, under its own lock
    other.mkdir()
    (other / ".lock").write_text("")
    (other / ".rows.csv.x1.tmp").write_bytes(b"in flight")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".lock", ".rows.csv.x1.tmp", "best.pth"]


@pytest.mark.parametrize("key, value, message", [
    ("train.epochs", 0, "train.epochs must be an integer >= 1, got 0"),
    ("train.batch_size", 0, "train.batch_size must be an integer >= 1"),
    ("train.lr", -1.0, "train.lr must be a number > 0, got -1.0"),
    ("train.lr", float("nan"), "train.lr must be a number > 0"),
    ("train.momentum", 1.5, "train.momentum must be a number >= 0 and <= 1"),
    ("train.grad_clip", 0.0, "train.grad_clip must be a number > 0 or null"),
    ("train.optimizer", "adamm", "train.optimizer must be one of adam, adamw, sgd; got 'adamm'"),
])
def test_range_checks_name_the_key_and_the_value(key, value, message):
    cfg = {"train": {"epochs": 3, "batch_size": 8, "lr": 1e-3, "momentum": 0.9, "grad_clip": None,
                     "optimizer": "adam"}}
    section, name = key.split(".")
    check_positive_ints(cfg, "train.epochs", "train.batch_size")
    cfg[section][name] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_positive_ints(cfg, "train.epochs", "train.batch_size")
        check_number(cfg, "train.lr", above=0)
        check_number(cfg, "train.momentum", minimum=0, maximum=1)
        check_number(cfg, "train.grad_clip", above=0, optional=True)
        check_choice(cfg, "train.optimizer", ("adam", "adamw", "sgd"))


def test_resume_check_names_the_changed_key_and_both_values(tmp_path):
    saved = {"device": "cpu", "train": {"lr": 0.002, "epochs": 5, "resume": False}}
    check_resume_config(saved, {"device": "cuda", "train": {"lr": 0.002, "epochs": 9, "resume": True}},
                        {"device", "train.epochs", "train.resume"}, tmp_path / "last.pth")
    with pytest.raises(ConfigError, match=r"train.lr=0.001 differs .*train.lr=0.002 in .*last.pth.*train.resume=false"):
        check_resume_config(saved, {"device": "cpu", "train": {"lr": 0.001, "epochs": 5, "resume": True}},
                            {"train.resume"}, tmp_path / "last.pth")


def test_completed_file_check_covers_listed_files_only_unless_required(tmp_path):
    from wildcapture.storage import check_completed_file

    _commit(tmp_path, {"best.pth": "weights"}, stage="train_cae")
    marker, digest = "train_cae.complete.yaml", sha256_file(tmp_path / "best.pth")
    check_completed_file(tmp_path / "best.pth", marker, digest, True, "stage 3")
    (tmp_path / "mine.pth").write_text("the user's own")
    check_completed_file(tmp_path / "mine.pth", marker, "any", False, "stage 3")  # not ours: nothing to check
    with pytest.raises(IncompleteOutputError, match="not the file the completed run"):
        check_completed_file(tmp_path / "best.pth", marker, "another digest", False, "stage 3")
    with pytest.raises(IncompleteOutputError, match="rerun stage 3"):
        check_completed_file(tmp_path / "mine.pth", marker, "any", True, "stage 3")


def test_open_image_turns_damaged_files_into_dataset_errors_but_not_bugs(tmp_path):
    from wildcapture.data.images import open_image
    from wildcapture.errors import DatasetError

    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="a.png"):
        with open_image(tmp_path / "a.png"):
            pass
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    with pytest.raises(TypeError):  # an error of the caller's code stays what it is
        with open_image(tmp_path / "b.png"):
            raise TypeError("a bug")


def test_a_run_refused_inside_the_lock_leaves_no_folder_it_made_and_keeps_one_it_found(tmp_path):
    with pytest.raises(ConfigError), hold_lock(tmp_path / "new" / "out", "stage 4"):
        raise ConfigError("refused before writing")
    assert list(tmp_path.iterdir()) == []  # the folder and the parent the lock made are gone
    (tmp_path / "found").mkdir()
    with pytest.raises(ConfigError), hold_lock(tmp_path / "found", "stage 4"):
        raise ConfigError("refused before writing")
    assert (tmp_path / "found").is_dir()
    with pytest.raises(ConfigError), hold_lock(tmp_path / "made", "stage 4") as lock:
        (lock.parent / "partial.txt").write_text("work to keep")
        raise ConfigError("failed after writing")
    assert (tmp_path / "made" / "partial.txt").read_text() == "work to keep"
