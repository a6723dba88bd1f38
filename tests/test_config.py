"""Config loading: presets, typed key=value overrides and errors that name the key."""
from pathlib import Path

import pytest
import yaml

from wildcapture.config import ConfigError, load_config
from wildcapture.storage import write_yaml

DEFAULT = {"exp": "digits", "seed": 0, "model": {"name": "vit", "img_size": 16, "pretrained": False},
           "train": {"lr": 1.0e-3, "epochs": 3, "extra": None, "classes": [0, 1]}}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(DEFAULT))
    (tmp_path / "big.yaml").write_text("exp: big\ntrain:\n  epochs: 20\n")
    return tmp_path


def test_defaults_preset_and_overrides_apply_in_order(config_dir):
    cfg = load_config(config_dir, "big", ["train.epochs=5", "train.lr=1e-4", "model.name=vit_base_patch16_224"])
    assert cfg["exp"] == "big"
    assert cfg["train"]["epochs"] == 5
    assert cfg["train"]["lr"] == pytest.approx(1e-4) and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"]["name"] == "vit_base_patch16_224"
    assert cfg["model"]["img_size"] == 16


def test_values_are_typed_like_the_default(config_dir):
    cfg = load_config(config_dir, None, ["train.lr=1", "model.pretrained=true", "train.classes=[3, 4]",
                                         "train.extra={a: 1}", "model.img_size=null"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"]["pretrained"] is True
    assert cfg["train"]["classes"] == [3, 4]
    assert cfg["train"]["extra"] == {"a": 1}
    assert cfg["model"]["img_size"] is None
    with pytest.raises(ConfigError, match="train.epochs.*must be a int"):
        load_config(config_dir, None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="model.pretrained"):
        load_config(config_dir, None, ["model.pretrained=maybe"])


def test_misspelled_key_is_named_with_suggestion_and_valid_keys(config_dir):
    with pytest.raises(ConfigError) as err:
        load_config(config_dir, None, ["train.epocs=5"])
    message = str(err.value)
    assert "'train.epocs'" in message and "Did you mean 'train.epochs'" in message
    assert "Valid keys: train.classes, train.epochs, train.extra, train.lr" in message  # that section's keys


def test_unknown_key_in_preset_names_the_file(config_dir):
    (config_dir / "bad.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train.learning_rate.*bad.yaml"):
        load_config(config_dir, "bad.yaml")


def test_missing_preset_lists_the_available_ones(config_dir):
    with pytest.raises(ConfigError, match="big.yaml"):
        load_config(config_dir, "nosuch")


def test_section_cannot_be_set_as_a_value(config_dir):
    with pytest.raises(ConfigError, match="is a section"):
        load_config(config_dir, None, ["train=5"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(config_dir, None, ["train.epochs"])


def test_saved_config_round_trips(config_dir, tmp_path):
    cfg = load_config(config_dir, None, ["seed=7"])
    write_yaml(tmp_path / "out" / "config.yaml", cfg)
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text()) == cfg
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "config.yaml"]  # no temporary file left


def test_data_section_is_filled_from_its_one_definition(tmp_path):
    from wildcapture.data.config import DATA_DEFAULTS
    (tmp_path / "config.yaml").write_text("exp: x\ndata: {}\n")
    (tmp_path / "p.yaml").write_text("data:\n  name: cifar10\n  augment:\n    hflip: 0.5\n")
    cfg = load_config(tmp_path, "p", ["data.seed=3"])
    expected = {**DATA_DEFAULTS, "name": "cifar10", "seed": 3, "augment": {**DATA_DEFAULTS["augment"], "hflip": 0.5}}
    assert cfg["data"] == expected
    with pytest.raises(ConfigError, match="data.sed.*Did you mean 'data.seed'"):
        load_config(tmp_path, None, ["data.sed=3"])


def _stage_checks() -> dict[str, list]:
    """Return config folder name -> the `check_config` of every stage that reads that folder (pipeline.STAGES)."""
    import importlib

    from wildcapture.pipeline import STAGES
    checks: dict[str, list] = {}
    for _, folder, module, _ in STAGES:
        checks.setdefault(folder, []).append(importlib.import_module(module).check_config)
    return checks


def _presets() -> list[tuple[str, str]]:
    from wildcapture.paths import REPO_ROOT
    return [(path.parent.parent.name, path.name) for path in sorted(REPO_ROOT.glob("*/config/*.yaml"))]


def test_every_config_folder_belongs_to_a_stage():
    folders = {folder for folder, _ in _presets()}
    assert folders == set(_stage_checks()) == {"Train_Vit_Classifier", "Test_Classifier", "AutoEncoder"}
    assert len(_presets()) >= 13


@pytest.mark.parametrize(("folder", "preset"), _presets())
def test_every_stage_preset_passes_its_stages_checks(folder, preset, monkeypatch):
    import torch

    from wildcapture.paths import REPO_ROOT
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # device=auto must pass on a CPU-only machine
    cfg = load_config(REPO_ROOT / folder / "config", None if preset == "config.yaml" else preset)
    if preset != "config.yaml":
        assert cfg != load_config(REPO_ROOT / folder / "config")  # the preset changes something
    assert cfg["device"] == "auto"
    for check in _stage_checks()[folder]:
        check(cfg)  # range and choice checks only: no file is needed


@pytest.mark.parametrize(("folder", "override", "key"), [
    ("Train_Vit_Classifier", "train.lr=-1e-3", "train.lr"),
    ("Train_Vit_Classifier", "train.optimizer=adagrad", "train.optimizer"),
    ("Test_Classifier", "batch_size=0", "batch_size"),
    ("Test_Classifier", "heatmap.kind=cls_first", "heatmap.kind"),
    ("AutoEncoder", "train.lr=-1e-4", "train.lr"),
    ("AutoEncoder", "train.accept_fraction=1.5", "train.accept_fraction"),
    ("AutoEncoder", "device=tpu", "device"),
])
def test_a_broken_value_in_a_preset_fails_every_check_of_its_stage(folder, override, key):
    from wildcapture.paths import REPO_ROOT
    preset = next(name for f, name in _presets() if f == folder and name != "config.yaml")
    cfg = load_config(REPO_ROOT / folder / "config", preset, [override])
    for check in _stage_checks()[folder]:  # AutoEncoder: stages 3 and 4
        with pytest.raises(ConfigError, match=key):
            check(cfg)


def test_exponent_floats_are_numbers_even_where_the_default_is_null(config_dir):
    cfg = load_config(config_dir, None, ["train.extra=1e-1", "train.lr=5e-5"])
    assert cfg["train"]["extra"] == pytest.approx(0.1) and isinstance(cfg["train"]["extra"], float)
    assert cfg["train"]["lr"] == pytest.approx(5e-5)
