"""Run stages 1-4 of one benchmark with each stage's preset config (`reproduce.py`).

Importing this module does not import torch: each stage's module is imported when the stage runs.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Sequence

from wildcapture.config import Config, ConfigError, _flat_keys, _unknown_key_error, load_config, parse_override
from wildcapture.paths import REPO_ROOT

BENCHMARKS = ("digits", "cifar10", "cifar10_scratch", "cifar100", "wildcapture")
# (name, config folder, module whose run(cfg) is the stage, overrides that make the stage a smoke run of a few batches)
STAGES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("1 train classifier", "Train_Vit_Classifier", "wildcapture.stages.train_classifier",
     ("data.limit_per_split=48", "train.epochs=1", "train.batch_size=16", "data.download=false")),
    ("2 test classifier", "Test_Classifier", "wildcapture.stages.evaluate_classifier",
     ("batch_size=16", "gallery_size=2")),
    ("3 train CAE", "AutoEncoder", "wildcapture.stages.train_cae", ("train.epochs=1", "train.batch_size=16")),
    ("4 test CAE", "AutoEncoder", "wildcapture.stages.score_cae", ("test.gallery_size=2",)),
)


def stage_of_item(item: str) -> tuple[int | None, str]:
    """Split a command-line item into (the 0-based stage it is for, the key=value item): `N:key=value` (N = 1..4)
    is for stage N alone, a plain `key=value` for every stage that has the key (None)."""
    head, sep, rest = item.partition(":")
    if sep and head.strip() in {str(i + 1) for i in range(len(STAGES))}:
        return int(head) - 1, rest
    return None, item


def stage_configs(benchmark: str, smoke: bool = False, extra: Sequence[str] = (),
                  per_stage: Sequence[Sequence[str]] = ((), (), (), ())) -> list[Config]:
    """Return the four stage configs: the benchmark's preset (the defaults for digits), the smoke
    overrides and experiment name `<benchmark>-smoke` when `smoke`, then `extra` key=value items
    that apply to every stage that has the key (ConfigError for a key that no stage has) and `N:key=value`
    items for stage N alone (`stage_of_item`), then `per_stage[i]`: items for stage i alone (ConfigError for a
    key that stage lacks). A `data.*` item goes to stage 1 only where a stage takes its data from the
    classifier's checkpoint (`data_from_checkpoint`)."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{benchmark}'; choose one of {', '.join(BENCHMARKS)}")
    preset = None if benchmark == "digits" else f"{benchmark}.yaml"
    if len(per_stage) != len(STAGES):
        raise ValueError(f"per_stage needs one list of items per stage ({len(STAGES)}), got {len(per_stage)}")
    staged = [stage_of_item(item) for item in extra]
    extra = [item for index, item in staged if index is None]
    per_stage = [[*(item for index, item in staged if index == i), *own] for i, own in enumerate(per_stage)]
    keys = [parse_override(item)[0] for item in extra]  # ConfigError for an item without '='
    configs, used, valid = [], set(), {}
    for (_, folder, _, smoke_overrides), own in zip(STAGES, per_stage):
        config_dir = REPO_ROOT / folder / "config"
        defaults = load_config(config_dir, preset)
        valid.update(dict.fromkeys(_flat_keys(defaults)))
        mine = [(item, key) for item, key in zip(extra, keys) if _has_key(defaults, key)
                and not (key.startswith("data.") and defaults.get("data_from_checkpoint"))]  # stage 1's data
        used.update(key for _, key in mine)
        overrides = [*(smoke_overrides + (f"exp={defaults['exp']}-smoke",) if smoke else ()),
                     *(item for item, _ in mine), *own]
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


def check_stage_configs(configs: Sequence[Config]) -> None:
    """Run each stage's own `check_config` on its config (the four of `stage_configs`, in order), so a value
    a later stage cannot use is a ConfigError before an earlier stage writes a file."""
    for (_, _, module, _), cfg in zip(STAGES, configs):
        importlib.import_module(module).check_config(cfg)


def check_pipeline(configs: Sequence[Config]) -> list[Path]:
    """What `reproduce.py --check` checks, writing nothing: every stage's config (`check_stage_configs`), then stage
    1's inputs (`train_classifier.check`: its data, never downloaded, and a resume); the later stages' inputs are
    made by the earlier ones. Returns the files the four stages would write, in order."""
    from wildcapture.data.config import resolve_data_cfg
    from wildcapture.data.protocol import resolve_protocol

    check_stage_configs(configs)
    modules = [importlib.import_module(module) for _, _, module, _ in STAGES]
    protocol = resolve_protocol(resolve_data_cfg(configs[0]["data"]))  # stage 2 tests on stage 1's data
    return [*modules[0].check(configs[0]), *modules[1].outputs(configs[1], protocol),
            *(path for module, cfg in zip(modules[2:], configs[2:]) for path in module.outputs(cfg))]


def run_stage(index: int, cfg: Config, label: str = "") -> tuple[Any, float]:
    """Run stage `index` (0-3, the order of STAGES) on `cfg` in this process, after printing its name and
    `label`; returns (the stage's `run(cfg)` result, wall-clock seconds rounded to 0.1)."""
    name, _, module, _ = STAGES[index]
    print(f"=== stage {name}{f' ({label})' if label else ''} ===", flush=True)
    started = time.perf_counter()
    result = importlib.import_module(module).run(cfg)
    return result, round(time.perf_counter() - started, 1)


def run_pipeline(benchmark: str, smoke: bool = False, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run stages 1-4; returns stage 4's result ({"rows", "markdown"}) plus per-stage `seconds`."""
    seconds, result = {}, {}
    label = f"{benchmark}{', smoke' if smoke else ''}"
    configs = stage_configs(benchmark, smoke, extra)
    check_stage_configs(configs)
    for index, ((name, _, _, _), cfg) in enumerate(zip(STAGES, configs)):
        result, seconds[name] = run_stage(index, cfg, label)
    return {**result, "seconds": seconds}
