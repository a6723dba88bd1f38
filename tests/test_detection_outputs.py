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


def _cli():
    spec = importlib.util.spec_from_file_location("detect_cli", REPO_ROOT / "detect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module