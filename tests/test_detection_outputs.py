"""What detect.py leaves on disk: only its outputs when it finishes, nothing new when it fails before a
checkpoint, a refusal before replacing another score's outputs, the CAE recorded portably, and command-line
paths taken against the working directory. Also the run lock's removal races."""
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wildcapture.paths
from wildcapture import run_lock
from wildcapture.detection import engine
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.errors import CheckpointError, ConfigError, DatasetError, RunLockedError
from wildcapture.paths import REPO_ROOT
from wildcapture.run_lock import hold_lock, remove_held
from wildcapture.storage import load_checkpoint

OUTPUTS = ["d.csv", "d.html", "d.json", "d_review"]


def _options(**changes) -> DetectOptions:
    return DetectOptions(**{"batch_size": 2, "device": "cpu", "workers": 0, **changes})


@pytest.fixture
def images(tmp_path) -> Path:
    """Three small PNGs in `images/`."""
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{seed}.png")
    return folder


def _tree(folder: Path) -> list[str]:
    """Every path under `folder` (hidden ones included), relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _metadata(out_csv: Path) -> dict:
    return json.loads(out_csv.with_suffix(".json").read_text())["info"]["classifier_metadata"]


def test_a_finished_run_leaves_only_its_outputs_and_records_the_cae_and_score(images, tiny_cae, tmp_path):
    cae = tiny_cae / "cae" / "best.pth"
    out = tmp_path / "out" / "d.csv"
    assert detect(images, cae, out, _options()).scored == 3
    assert sorted(p.name for p in out.parent.iterdir()) == OUTPUTS  # no .d.csv.incomplete/ and no .lock
    meta = _metadata(out)
    assert meta["cae_checkpoint"] == cae.resolve().as_posix()  # outside the repository: the path itself
    assert meta["cae_sha256"] == hashlib.sha256(cae.read_bytes()).hexdigest()
    assert meta["score"] == "cae" and meta["ood_score"].startswith("cae: ")


def test_a_second_run_is_refused_while_the_first_runs_and_nothing_of_either_stays(images, tiny_cae, tmp_path,
                                                                                    monkeypatch):
    cae, out = tiny_cae / "cae" / "best.pth", tmp_path / "out" / "d.csv"
    real, refusals = engine._scored_rows, []

    def second_run_meanwhile(*args, **kwargs):
        if not refusals:
            with pytest.raises(RunLockedError, match=r"\.d\.csv\.incomplete is in use by another run: pid") as err:
                detect(images, cae, out, _options())
            refusals.append(err.value)
            assert (out.parent / ".d.csv.incomplete" / ".lock").is_file()  # the refused run removed nothing
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_scored_rows", second_run_meanwhile)
    assert detect(images, cae, out, _options()).scored == 3
    assert len(refusals) == 1 and sorted(p.name for p in out.parent.iterdir()) == OUTPUTS
    monkeypatch.setattr(engine, "_scored_rows", real)
    before = out.read_bytes()
    assert detect(images, cae, out, _options()).scored == 3  # the same command again: scored again, replaced
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == OUTPUTS


def test_a_run_started_as_the_holder_removes_the_folder_takes_a_new_lock(tmp_path):
    folder = tmp_path / "work"
    with hold_lock(folder, "first"):
        remove_held(folder)
        assert not folder.exists()
        with hold_lock(folder, "second"):  # the first one's lock file is gone: a new one, held by the second
            assert [p.name for p in folder.iterdir()] == [".lock"]
            with pytest.raises(RunLockedError, match="second"):
                with hold_lock(folder, "third"):
                    pass
    with hold_lock(folder, "afterwards"):
        pass


def test_locking_a_lock_file_its_holder_just_removed_takes_the_new_one(tmp_path, monkeypatch):
    """The holder removes the folder between our open and our flock, or between our mkdir and our open:
    the lock taken is the folder's current lock file, not the removed one, and nothing crashes."""
    folder, calls = tmp_path / "work", []
    real_flock, real_open = run_lock.fcntl.flock, open

    def holder_finishes_before_flock(fd, operation):
        calls.append("flock")
        if len(calls) == 1:
            remove_held(folder)
        return real_flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", holder_finishes_before_flock)
    with hold_lock(folder, "mine"):
        assert calls == ["flock", "flock"] and json.loads((folder / ".lock").read_text())["what"] == "mine"
        with pytest.raises(RunLockedError, match="mine"):
            with hold_lock(folder, "other"):
                pass
    monkeypatch.setattr(run_lock.fcntl, "flock", real_flock)

    def holder_finishes_before_open(path, *args, **kwargs):
        calls.append("open")
        if calls.count("open") == 1:
            folder.rmdir()
        return real_open(path, *args, **kwargs)

    shutil.rmtree(folder)
    folder.mkdir()
    monkeypatch.setattr(run_lock, "open", holder_finishes_before_open, raising=False)
    with hold_lock(folder, "mine"):
        assert calls.count("open") == 2 and (folder / ".lock").is_file()


def test_early_failures_leave_nothing_new_on_disk(images, tiny_cae, tmp_path, monkeypatch):
    cae = tiny_cae / "cae" / "best.pth"
    out, crops = tmp_path / "new" / "deeper" / "d.csv", tmp_path / "crops"
    options = _options(export_crops=crops)
    with pytest.raises(DatasetError, match="image folder not found"):
        detect(tmp_path / "missing", cae, out, options)
    torch.save({k: v for k, v in load_checkpoint(cae).items() if k != "heatmaps"}, tmp_path / "alien.pth")
    with pytest.raises(CheckpointError, match="names no classifier"):
        detect(images, tmp_path / "alien.pth", out, options)
    with pytest.raises(ConfigError, match="one of the classifier's classes"):
        detect(images, cae, out, _options(unknown_label=load_checkpoint(cae)["heatmaps"]["classifier"]["class_names"][0]))

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory in the first batch")

    monkeypatch.setattr(engine, "_scored_rows", fails)
    with pytest.raises(RuntimeError, match="first batch"):  # after the folders and the lock were made
        detect(images, cae, out, options)
    assert _tree(tmp_path) == ["alien.pth", "images", "images/0.png", "images/1.png", "images/2.png"]
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="first batch"):  # a folder that was there stays, as it was
        detect(images, cae, tmp_path / "kept" / "d.csv", options)
    assert _tree(tmp_path / "kept") == ["notes.txt"] and not crops.exists()


def test_finished_outputs_of_the_other_score_are_replaced_only_with_overwrite(images, tiny_cae, tmp_path):
    cae, out = tiny_cae / "cae" / "best.pth", tmp_path / "d.csv"
    detect(images, cae, out, _options(html=False))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("d.*")}
    message = (rf"--out {out} holds the finished outputs of --score cae, which --score fusion would replace: add "
               "--overwrite to replace them, or give another --out")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        detect(images, cae, out, _options(html=False, score="fusion"))
    document = json.loads(out.with_suffix(".json").read_text())  # an output of a version that did not record it
    del document["info"]["classifier_metadata"]["score"]
    out.with_suffix(".json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="finished outputs of --score cae"):
        detect(images, cae, out, _options(html=False, score="fusion"))
    out.with_suffix(".json").write_bytes(before["d.json"])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("d.*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "d.json", "images"]

    detect(images, cae, out, _options(html=False, score="fusion", overwrite=True))
    assert _metadata(out)["score"] == "fusion" and _metadata(out)["ood_score"].startswith("cae+mahalanobis: ")
    detect(images, cae, out, _options(html=False, score="fusion"))  # the same score again: no refusal


def _cli():
    spec = importlib.util.spec_from_file_location("detect_cli", REPO_ROOT / "detect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_paths_are_relative_to_the_working_directory(images, tiny_cae, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cae = tiny_cae / "cae" / "best.pth"
    monkeypatch.setattr("sys.argv", ["detect.py", "../images", "--cae", os.path.relpath(cae, cwd), "--out",
                                     "out/d.csv", "--device", "cpu", "--workers", "0", "--no-html"])
    _cli().main()
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"; wrote {cwd / 'out' / 'd.csv'}, {cwd / 'out' / 'd.json'}")
    assert sorted(p.name for p in (cwd / "out").iterdir()) == ["d.csv", "d.json"]
    assert _metadata(cwd / "out" / "d.csv")["cae_checkpoint"] == cae.resolve().as_posix()


def test_the_default_cae_and_out_are_the_repositorys_and_recorded_relative_to_it(images, tiny_cae, tmp_path,
                                                                                  monkeypatch, capsys):
    repo, cwd = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / "weights" / "x" / "cae").mkdir(parents=True)
    shutil.copy(tiny_cae / "cae" / "best.pth", repo / "weights" / "x" / "cae" / "best.pth")
    cwd.mkdir()
    monkeypatch.setattr(wildcapture.paths, "REPO_ROOT", repo)
    monkeypatch.chdir(cwd)
    cli = _cli()
    with pytest.raises(ConfigError, match=rf"--cae weights/x/cae/best.pth: not found in the working directory {cwd} "
                                          rf".*give {repo}/weights/x/cae/best.pth"):
        cli.cae_path(Path("weights/x/cae/best.pth"), "x")  # as earlier versions resolved it: named, not guessed
    monkeypatch.setattr("sys.argv", ["detect.py", str(images), "--exp", "x", "--device", "cpu", "--workers", "0",
                                     "--no-html"])
    cli.main()
    out = repo / "results" / "x" / "detections.csv"
    assert f"wrote {out}, " in capsys.readouterr().out and _tree(cwd) == []
    assert _metadata(out)["cae_checkpoint"] == "weights/x/cae/best.pth"
