"""Run stages 1-4 of one benchmark with each stage's preset config (`reproduce.py`).

Importing this module does not import torch: each stage's module is imported when the stage runs.
"""
from __future__ import annotations

import importlib
import time
from typing import Any, Sequence

from wildcapture.config import Config, ConfigError, _flat_keys, _unknown_key_error, load_config, parse_override
from wildcapture.paths import REPO_ROOT

BENCHMARKS = ("digits", "cifar10", "cifar100", "wildcapture")
# (name, config folder, module whose run(cfg) is the stage, overrides that make the stage a smoke run of a few batches)
STAGES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("1 train classifier", "Train_Vit_Classifier", "wildcapture.stages.train_classifier",
     ("data.limit_per_split=48", "train.epochs=1", "train.batch_size=16", "data.download=false")),
    ("2 test classifier", "Test_Classifier", "wildcapture.stages.evaluate_classifier",
     ("batch_size=16", "gallery_size=2")),
    ("3 train CAE", "AutoEncoder", "wildcapture.stages.train_cae", ("train.epochs=1", "train.batch_size=16")),
    ("4 test CAE", "AutoEncoder", "wildcapture.stages.score_cae", ("test.gallery_size=2",)),
)


def stage_configs(benchmark: str, smoke: bool = False, extra: Sequence[str] = ()) -> list[Config]:
    """Return the four stage configs: the benchmark's preset (the defaults for digits), the smoke
    overrides and experiment name `<benchmark>-smoke` when `smoke`, then `extra` key=value items
    that apply to every stage that has the key (ConfigError for a key that no stage has)."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{benchmark}'; choose one of {', '.join(BENCHMARKS)}")
    preset = None if benchmark == "digits" else f"{benchmark}.yaml"
    keys = [parse_override(item)[0] for item in extra]  # ConfigError for an item without '='
    configs, used, valid = [], set(), {}
    for _, folder, _, smoke_overrides in STAGES:
        config_dir = REPO_ROOT / folder / "config"
        defaults = load_config(config_dir, preset)
        valid.update(dict.fromkeys(_flat_keys(defaults)))
        mine = [(item, key) for item, key in zip(extra, keys) if _has_key(defaults, key)]
        used.update(key for _, key in mine)
        overrides = [*(smoke_overrides + (f"exp={defaults['exp']}-smoke",) if smoke else ()),
                     *(item for item, _ in mine)]
        configs.append(load_config(config_dir, preset, overrides))
    unknown = [key for key in keys if key not in used]
    if unknown:
        raise _unknown_key_error(unknown[0], _section_keys(unknown[0], list(valid)),
                                 "the command line (no stage config has it)")
    return configs


def _section_keys(key: str, valid: list[str]) -> list[str]:
    """Return the keys of `valid` in the deepest section of `key` that exists (all of `valid` if none does)."""
    section = key.rpartition(".")[0]
    while section:
        keys = [k for k in valid if k.startswith(section + ".")]
        if keys:
            return keys
        section = section.rpartition(".")[0]
    return valid


def _has_key(cfg: Config, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def run_pipeline(benchmark: str, smoke: bool = False, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run stages 1-4; returns stage 4's result ({"rows", "markdown"}) plus per-stage `seconds`."""
    seconds, result = {}, {}
    for (name, _, module, _), cfg in zip(STAGES, stage_configs(benchmark, smoke, extra)):
        print(f"=== stage {name} ({benchmark}{', smoke' if smoke else ''}) ===", flush=True)
        started = time.perf_counter()
        result = importlib.import_module(module).run(cfg)
        seconds[name] = round(time.perf_counter() - started, 1)
    return {**result, "seconds": seconds}
