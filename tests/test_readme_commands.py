"""Every command of README.md and docs/*.md, checked: run with `--check` against a digits experiment built here
(in a copy of the repository, so the user's own weights/ and results/ are never touched)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from command_check import commands, failures
from wildcapture.paths import REPO_ROOT

pytestmark = pytest.mark.e2e
CODE = ("wildcapture", "Train_Vit_Classifier", "Test_Classifier", "AutoEncoder", "benchmarks", "detect.py",
        "reproduce.py")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository's code holding a complete digits experiment (`reproduce.py`, one epoch per
    training stage) and a small season: `season/` (one JPEG) and `season/md_output.json` (MegaDetector)."""
    root = tmp_path_factory.mktemp("repo")
    for name in CODE:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    done = subprocess.run([sys.executable, "reproduce.py", "train.epochs=1", "device=cpu"], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    season = root / "season"
    season.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 60)).save(season / "IMG_0001.JPG")
    (season / "md_output.json").write_text(json.dumps({
        "info": {"format_version": "1.4"}, "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [{"file": "IMG_0001.JPG", "detections": [{"category": "1", "conf": 0.9,
                                                             "bbox": [0.1, 0.1, 0.5, 0.6]}]}]}))
    return root


def _placeholders(repo):
    season = repo / "season"
    return {"path/to/season/": f"{season}/", "path/to/season": str(season),
            "path/to/md_output.json": str(season / "md_output.json")}


def test_every_command_of_the_readme_and_docs_passes_its_check(repo):
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    texts = {str(p.relative_to(REPO_ROOT)): p.read_text(encoding="utf-8") for p in docs}
    assert sum(len(commands(t)) for t in texts.values()) >= 10
    assert failures(texts, repo, _placeholders(repo)) == []


def test_the_check_fails_for_a_key_or_a_variant_that_does_not_exist(repo):
    broken = "\n".join(["```bash",
                        "python AutoEncoder/train.py train.epochs=5          # a real key: passes",
                        "python AutoEncoder/train.py cae.small.depth=3       # no such key",
                        "python benchmarks/seeds.py --seeds 2 --variants cls_last rollout   # no such variants",
                        "python benchmarks/bench_cae_epoch.py --arch small --layers 3   # no such option",
                        "python detect.py path/to/season/ --exp digits",
                        "```"])
    found = failures({"fixture.md": broken}, repo, _placeholders(repo))
    assert [line.split(":")[1] for line in found] == ["3", "4", "5"], found
    assert "cae.small.depth" in found[0] and "unknown variant 'cls_last'" in found[1] and "--layers" in found[2]
