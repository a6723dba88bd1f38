"""`--check` on every entry point: it checks, prints the plan and writes nothing (the experiment hashed before and
after); a problem exits 2 with one line, still writing nothing."""
import hashlib
import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from stage_helpers import PAPER_HEATMAP, TINY_CAE, TINY_VIT
from wildcapture.cli import stage_main
from wildcapture.paths import REPO_ROOT

PASSED = "check passed; nothing was written"


def _tree(*folders: Path) -> dict[str, str]:
    """{path: SHA-256} of every file under `folders` (missing folders hold none)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders if folder.exists()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("/", "_")[:-3], REPO_ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stage_commands(vit: Path, heatmaps: Path, cae: Path) -> list[tuple[str, str, list[str]]]:
    """(config folder, stage module, argv) of each stage's --check on the tiny experiment."""
    stage2 = [f"checkpoint={vit / 'best.pth'}", f"heatmaps_dir={heatmaps / 'heatmaps'}",
              f"results_dir={heatmaps / 'results'}", "device=cpu", *PAPER_HEATMAP]
    stage34 = [*TINY_CAE, f"heatmaps_dir={heatmaps / 'heatmaps'}", f"output_dir={cae / 'cae'}",
               f"results_dir={cae / 'results'}", f"test.baseline_scores={heatmaps / 'results' / 'baseline_scores.csv'}"]
    return [("Train_Vit_Classifier", "train_classifier", [*TINY_VIT, f"output_dir={vit}"]),
            ("Test_Classifier", "evaluate_classifier", stage2),
            ("AutoEncoder", "train_cae", [*stage34, "train.epochs=4", "train.resume=true"]),
            ("AutoEncoder", "score_cae", stage34)]


def test_check_on_every_entry_point_writes_nothing(tiny_vit_checkpoint, tiny_heatmaps, tiny_cae, tmp_path,
                                                   monkeypatch, capsys):
    vit = tiny_vit_checkpoint.parent
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (24, 20), (10, 200, 30)).save(images / "a.jpg")
    repo_outputs = [REPO_ROOT / name for name in ("weights", "results", "data")]
    watched = [vit, tiny_heatmaps, tiny_cae, tmp_path, *repo_outputs]
    before = _tree(*watched)

    for folder, module, argv in _stage_commands(vit, tiny_heatmaps, tiny_cae):
        stage_main(REPO_ROOT / folder / "config", "", f"wildcapture.stages.{module}", [*argv, "--check"])
    monkeypatch.setattr("sys.argv", ["detect.py", str(images), "--cae", str(tiny_cae / "cae" / "best.pth"), "--out",
                                     str(tmp_path / "out" / "d.csv"), "--device", "cpu", "--check"])
    _script("detect.py").main()
    _script("reproduce.py").main(["--check", "device=cpu"])
    _script("benchmarks/seeds.py").main(["--seeds", "2", "--out", str(tmp_path / "study"), "--check"])
    _script("benchmarks/seeds.py").main(["--seeds", "2", "--only", "1", "--out", str(tmp_path / "part"), "--check"])

    out = capsys.readouterr().out
    assert out.count(PASSED) == 8
    part = tmp_path / "part"  # --only: that seed's runs, no summary
    assert f"{part / 'runs' / 'seed1'}\n" in out and str(part / "summary") not in out and "part/runs/seed0" not in out
    assert f"{vit / 'best.pth'}\n" in out and f"{tiny_cae / 'results' / 'ood_table.csv'}\n" in out
    assert f"{tmp_path / 'out' / 'd.json'}\n" in out and f"{tmp_path / 'study' / 'summary.md'}\n" in out
    assert "resolved config:\n  exp: digits\n" in out  # a stage's config, printed in full
    assert _tree(*watched) == before and sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("stage, problem, message", [
    (1, ["train.resume=true", "train.epochs=3"], "train.epochs=3 differs from the run being resumed"),  # cosine
    (1, ["model.name=vit_bogus"], "unknown timm model 'vit_bogus'"),  # the model is built, on the meta device
    (1, ["data.interpolation=bogus"], "unknown interpolation 'bogus'"),  # and its transforms
    (2, ["heatmap.kind=rollout"], "holds heatmaps with heatmap.kind 'cls_last'"),  # would replace another variant
    (3, ["train.epochs=3"], "already finished epoch 2 of train.epochs=3"),  # a resume with nothing to do
    (4, ["cae.paper.input_size=32"], "made with cae.paper.input_size=16"),
])
def test_a_check_that_finds_a_problem_exits_2_with_one_line_and_writes_nothing(
        tiny_vit_checkpoint, tiny_heatmaps, tiny_cae, capsys, stage, problem, message):
    vit = tiny_vit_checkpoint.parent
    folder, module, argv = _stage_commands(vit, tiny_heatmaps, tiny_cae)[stage - 1]
    before = _tree(vit, tiny_heatmaps, tiny_cae)
    with pytest.raises(SystemExit) as exit_:
        stage_main(REPO_ROOT / folder / "config", "", f"wildcapture.stages.{module}", [*argv, *problem, "--check"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert _tree(vit, tiny_heatmaps, tiny_cae) == before


def test_detect_check_refuses_the_unfinished_run_of_another_job(tiny_cae, tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (24, 20), (10, 200, 30)).save(images / "a.jpg")
    work = tmp_path / "out" / ".d.csv.incomplete"
    work.mkdir(parents=True)
    (work / "progress.rank0.json").write_text('{"fingerprint": "another job", "items_done": 1, "bytes": 10}')
    before = _tree(tmp_path)
    monkeypatch.setattr("sys.argv", ["detect.py", str(images), "--cae", str(tiny_cae / "cae" / "best.pth"), "--out",
                                     str(tmp_path / "out" / "d.csv"), "--device", "cpu", "--check"])
    with pytest.raises(SystemExit) as exit_:
        _script("detect.py").main()
    assert exit_.value.code == 2 and "holds an unfinished run of another job" in capsys.readouterr().err
    assert _tree(tmp_path) == before

