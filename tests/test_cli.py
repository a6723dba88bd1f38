"""The command-line entry points: instant --help, and every user error as one line on stderr with exit status 2."""
import errno
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from wildcapture.cli import stage_main
from wildcapture.errors import exit_on_user_error, user_error_message
from wildcapture.config import load_config
from wildcapture.errors import ConfigError, DatasetError
from wildcapture.paths import REPO_ROOT
from wildcapture.pipeline import stage_configs
from wildcapture.study.variants import VARIANTS

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
STAGE_SCRIPTS = ["Train_Vit_Classifier/train.py", "Test_Classifier/test_classifier.py", "AutoEncoder/train.py",
                 "AutoEncoder/test_autoencoder.py"]
# Runs a script with the given arguments, then fails if that imported torch.
RUN_WITHOUT_TORCH = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    assert "torch" not in sys.modules, "torch was imported"
"""


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_TORCH, *args], cwd=REPO_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


def test_light_modules_do_not_import_torch():
    code = ("import sys, wildcapture.cli, wildcapture.config, wildcapture.errors, wildcapture.paths, "
            "wildcapture.pipeline, wildcapture.study.variants; assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_stage_help_lists_presets_and_a_valid_example_without_importing_torch(script):
    result = _run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    config_dir = (REPO_ROOT / script).parent / "config"
    presets = sorted(p.stem for p in config_dir.glob("*.yaml") if p.name != "config.yaml")
    assert presets and f"presets for --config: {', '.join(presets)}" in result.stdout
    example = re.search(r"e\.g\. (\S+=\S+)\s*$", result.stdout).group(1)
    assert "." in example.split("=")[0]
    load_config(config_dir, None, [example])  # the stage's own config has the key (ConfigError if not)


@pytest.mark.parametrize("script", ["reproduce.py", "detect.py", "benchmarks/seeds.py"])
def test_runner_help_without_importing_torch(script):
    result = _run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


def test_stage_script_argument_error_is_one_line_exit_2():
    result = _run_script("Train_Vit_Classifier/train.py", "train.epoch=3")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unknown config key 'train.epoch'") and "Did you mean 'train.epochs'" in result.stderr


def test_reproduce_unknown_key_gets_the_stage_scripts_hint():
    result = _run_script("reproduce.py", "train.epoch=3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown config key 'train.epoch'" in result.stderr and "Did you mean 'train.epochs'?" in result.stderr


def test_seeds_unknown_variant_is_one_line_exit_2_without_importing_torch():
    result = _run_script("benchmarks/seeds.py", "--seeds", "2", "--variants", VARIANTS[0].name, "cls_lst")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    names = ", ".join(v.name for v in VARIANTS)
    assert result.stderr == f"error: unknown variant 'cls_lst'; choose from {names}\n"


# Keys the paper's repository's README tells its users to set: (stage script, key=value, our key the error names).
SEED_KEY_RUNS = [
    ("Test_Classifier/test_classifier.py", "extract_attention=true", "heatmap.kind"),
    ("Test_Classifier/test_classifier.py", "save_att_heatmap=true", "heatmap.kind"),
    ("Test_Classifier/test_classifier.py", "model_path=modelTRANSFORMER_VIT", "checkpoint=PATH"),
    ("AutoEncoder/test_autoencoder.py", "model_path=AutoEncoderW.pt", "test.checkpoint=PATH"),
    ("AutoEncoder/test_autoencoder.py", "dest_file=reconstrError.pkl", "results_dir=DIR"),
]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("via_yaml", [False, True], ids=["command-line", "yaml"])
@pytest.mark.parametrize("script,item,ours", SEED_KEY_RUNS)
def test_seed_repository_key_names_ours_and_writes_nothing(script, item, ours, via_yaml, tmp_path):
    exp = f"seed-key-{tmp_path.name}"
    outputs = ["heatmaps_dir", "results_dir"] + (["output_dir"] if script.startswith("AutoEncoder") else [])
    items = [f"exp={exp}", *(f"{key}={tmp_path / 'out' / key}" for key in outputs), item]  # seed key last
    if via_yaml:  # flat, as the seed's YAML files are
        (tmp_path / "seed.yaml").write_text("".join(f"{k}: {v}\n" for k, v in (i.split("=", 1) for i in items)))
        items = ["--config", str(tmp_path / "seed.yaml")]
    before = _files(tmp_path)
    result = _run_script(script, *items)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    key = item.split("=")[0]
    assert result.stderr.startswith(f"error: config key '{key}' in ") and "paper's repository" in result.stderr
    assert ours in result.stderr and "Valid keys" not in result.stderr
    assert _files(tmp_path) == before
    assert not [d for d in ("data/heatmaps", "results", "weights") if (REPO_ROOT / d / exp).exists()]


def test_reproduce_unknown_key_lists_the_keys_of_its_section():
    with pytest.raises(ConfigError) as err:
        stage_configs("digits", extra=["data.augment.flip=1"])
    assert str(err.value) == ("unknown config key 'data.augment.flip' in the command line (no stage config has it). "
                              "Did you mean 'data.augment.hflip'? Valid keys: data.augment.hflip, "
                              "data.augment.random_resized_crop, data.augment.color_jitter")


def test_stage_main_reports_an_error_of_the_run_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stage_main(REPO_ROOT / "Train_Vit_Classifier" / "config", "stage 1", "wildcapture.stages.train_classifier",
                   ["device=gpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: device 'gpu'") and "auto, cpu, cuda, cuda:N, mps" in err


def test_reproduce_prints_the_ood_table_once(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("reproduce", REPO_ROOT / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    table = "| Detector | AUROC |\n|---|---:|\n| cae | 0.9 |"

    def pipeline_as_stage_4_prints(benchmark, smoke, extra):
        print(table)  # stage 4's run prints the table it returns
        return {"rows": [], "markdown": table, "seconds": {"1 train classifier": 2.0, "4 test CAE": 1.0}}

    monkeypatch.setattr(reproduce, "run_pipeline", pipeline_as_stage_4_prints)
    reproduce.main(["--smoke"])
    out = capsys.readouterr().out
    assert out.count("| Detector |") == 1
    assert out.strip().endswith("stage 1 train classifier: 2 s, stage 4 test CAE: 1 s")
    machine = out.strip().splitlines()[-2]  # under the table: CPU model, threads, torch version, device
    assert machine.startswith("machine: ") and f"torch {torch.__version__}" in machine
    assert f"{torch.get_num_threads()} threads" in machine and re.search(r"device (cpu|cuda:\d)", machine)


class _Broken(Dataset):
    """Items 0 and 1 raise the errors a data set raises for bad files; item 2 a missing file."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int):
        if index == 0:
            raise DatasetError("cannot read image /data/WildCapture/Red Deer/broken.jpg: not a JPEG")
        if index == 1:
            raise DatasetError("first line\nsecond line")
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/gone.jpg")


@pytest.fixture(scope="module")
def worker_errors() -> list[Exception]:
    """The errors of the items of _Broken as torch re-raises them from a DataLoader worker process."""
    batches = iter(DataLoader(_Broken(), batch_size=None, num_workers=1))
    errors = []
    for _ in range(len(_Broken())):
        with pytest.raises(Exception) as err:
            next(batches)
        errors.append(err.value)
    with pytest.raises(StopIteration):  # the end of the data: the worker process exits now
        next(batches)
    assert all("Original Traceback" in str(e) for e in errors)  # torch wraps the worker's error
    return errors


def test_errors_of_dataloader_workers_show_the_original_message(worker_errors):
    broken, multi_line, missing = map(user_error_message, worker_errors)
    assert broken == "cannot read image /data/WildCapture/Red Deer/broken.jpg: not a JPEG"
    assert multi_line == "first line\nsecond line"
    assert missing == "[Errno 2] No such file or directory: '/data/gone.jpg'"
    assert isinstance(worker_errors[0], DatasetError) and isinstance(worker_errors[2], FileNotFoundError)


def test_worker_error_exits_2_with_one_line(worker_errors, capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        raise worker_errors[0]
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: cannot read image /data/WildCapture/Red Deer/broken.jpg: not a JPEG\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_full_disk_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error():
        Path("/dev/full").write_bytes(b"weights")  # a real ENOSPC
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: cannot write the outputs: No space left on device; free space or "
                                       "point output_dir/heatmaps_dir/results_dir at another disk\n")


def test_disk_and_permission_errors_name_the_file_and_the_fix():
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/best.pth")
    assert user_error_message(read_only) == (f"cannot write /mnt/ro/best.pth: {os.strerror(errno.EROFS)}; "
                                             "point output_dir/heatmaps_dir/results_dir at a writable disk")
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/me/x.npy")
    assert user_error_message(quota, outputs="--out").startswith("cannot write /home/me/x.npy: ")
    assert user_error_message(quota, outputs="--out").endswith("free space or point --out at another disk")
    for code in (errno.EACCES, errno.EPERM):
        message = user_error_message(PermissionError(code, os.strerror(code), "/srv/results"))
        assert message.startswith(f"cannot access /srv/results: {os.strerror(code)}; check its permissions")


def test_bugs_keep_their_traceback():
    for bug in (OSError(errno.EIO, "Input/output error", "/dev/sda"), ValueError("bad"), RuntimeError("oops")):
        assert user_error_message(bug) is None
        with pytest.raises(type(bug)), exit_on_user_error():
            raise bug
