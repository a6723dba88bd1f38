"""Stage configuration: a YAML default, an optional preset, and typed `key=value` overrides.

Every stage script takes the same command line::

    python STAGE.py [--config PRESET.yaml] [section.key=value ...]

The stage's `config/config.yaml` holds every valid key with its default. A preset (a name in the
stage's `config/` folder, or any path) replaces some of those values; `key=value` arguments then
replace single keys, using dots for nested sections (`train.lr=3e-4`). A value is parsed as YAML
and must have the type of the default (an int is accepted where a float is expected), or be `null`;
a key whose default is `null` takes any value. A key that is not in the default is an error that names it and
lists the valid keys; a key of the paper's repository (SEED_KEYS) is an error that names ours instead.
"""
from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from wildcapture.errors import ConfigError
from wildcapture.paths import DATA_DEFAULTS_FILE, resolve_path

Config = dict[str, Any]
CHECK_HELP = ("check the config, the inputs and their provenance, print the resolved config and the files the run "
              "would write, and exit (0, or 2 with the problem) without writing anything")

_HEATMAPS = ("stage 2 always extracts and saves the heatmaps, to <heatmaps_dir>/<split>/heatmaps.npy (heatmaps_dir, "
             "default data/heatmaps/<exp>); heatmap.kind and heatmap.block choose their kind (heatmap.export_png=true "
             "adds PNGs)")
# Keys of the paper's repository (github.com/lcultrera/WildCapture; its YAML files are flat), as its README tells
# its users to set them -> (our key, what to say where the stage's config has that key), first match wins. Such a
# key stops the run (exit 2) even where it maps one-to-one, so no seed config is half-read.
SEED_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "model_path": (("test.checkpoint", "here the CAE checkpoint is test.checkpoint=PATH (stage 4 reads it, the "
                                       "paper's AutoEncoderW.pt too; stage 3 writes to output_dir)"),
                   ("checkpoint", "here the classifier weights are checkpoint=PATH (ours or the paper's)")),
    "dest_file": (("results_dir", "stage 4 writes the reconstruction errors to <results_dir>/recon_errors.pkl (and "
                                  ".csv); results_dir=DIR moves them (default results/<exp>)"),),
    "extract_attention": (("heatmap.kind", _HEATMAPS),),
    "save_att_heatmap": (("heatmap.kind", _HEATMAPS),),
}


def _flat_keys(cfg: Config, prefix: str = "") -> list[str]:
    """Return every leaf key of `cfg` as a dotted path, in file order."""
    keys = []
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        keys.extend(_flat_keys(value, path + ".") if isinstance(value, dict) else [path])
    return keys


def _seed_key_error(key: str, valid: list[str], source: str) -> ConfigError | None:
    """Return the error naming our equivalent of `key` when its last part is a key of the paper's repository
    whose equivalent is among `valid`, else None."""
    for ours, text in SEED_KEYS.get(key.rpartition(".")[2], ()):
        if ours in valid:
            return ConfigError(f"config key '{key}' in {source} is the paper's repository's name; {text}")
    return None


def _unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    """Return the error for `key`, not among `valid`: our equivalent of a seed key, else the closest key and all."""
    seed = _seed_key_error(key, valid, source)
    if seed:
        return seed
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}.{hint} Valid keys: {', '.join(valid)}")


_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Return `value` converted to the type of `default`, or raise ConfigError."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):  # YAML 1.1 reads "1e-4" as a string
        value = float(value)
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    expected = type(default).__name__
    raise ConfigError(f"config key '{key}' in {source} must be a {expected} (like its default {default!r}), got {value!r}")


def _merge(base: Config, update: Config, source: str, prefix: str = "") -> None:
    """Overwrite values of `base` with those of `update` in place, checking keys and types."""
    valid = _flat_keys(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise _unknown_key_error(path, [prefix + k for k in valid], source)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' in {source} is a section; set its keys, e.g. {path}.{next(iter(base[key]))}=...")
            _merge(base[key], value, source, path + ".")
        else:
            base[key] = _coerce(path, value, base[key], source)


def read_yaml(path: Path) -> Config:
    """Return the mapping stored in the YAML file at `path` (an empty file gives {})."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def find_preset(name: str, config_dir: Path) -> Path:
    """Return the preset file: `name` inside the stage's config folder, else a path (cwd, then repo)."""
    for candidate in (config_dir / name, config_dir / f"{name}.yaml", Path(name), resolve_path(name)):
        if candidate.is_file():
            return candidate
    presets = sorted(p.name for p in config_dir.glob("*.yaml"))
    raise ConfigError(f"config preset '{name}' not found; presets in {config_dir}: {', '.join(presets)}")


def parse_override(item: str) -> tuple[str, Any]:
    """Split a `key=value` argument into the key and its YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"argument '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> Config:
    node: Config = {}
    parts = key.split(".")
    cursor = node
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return node


def _with_data_defaults(cfg: Config) -> Config:
    """Fill a `data:` section from the one definition of its keys (DATA_DEFAULTS_FILE); in place."""
    if "data" in cfg:
        section = cfg["data"] or {}
        cfg["data"] = read_yaml(DATA_DEFAULTS_FILE)
        _merge(cfg["data"], section, "the data: section", "data.")
    return cfg


def load_config(config_dir: Path, preset: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Return the resolved config: `config_dir/config.yaml` (its `data:` section filled from
    DATA_DEFAULTS_FILE), then `preset`, then `overrides`."""
    cfg = _with_data_defaults(read_yaml(config_dir / "config.yaml"))
    if preset:
        path = find_preset(preset, config_dir)
        _merge(cfg, read_yaml(path), str(path))
    for item in overrides:
        key, value = parse_override(item)
        _merge(cfg, _nest(key, value), "the command line")
    return cfg


def _example_override(cfg: Config) -> str:
    """Return a `key=value` argument valid for `cfg`: its first key inside a section whose default is a
    non-null scalar (else the first such key at the top level), set to that default."""
    candidates = []
    for key in _flat_keys(cfg):
        value: Any = cfg
        for part in key.split("."):
            value = value[part]
        if value is not None and not isinstance(value, list):
            candidates.append((key, str(value).lower() if isinstance(value, bool) else value))
    key, value = next((c for c in candidates if "." in c[0]), candidates[0])
    return f"{key}={value}"


def _help_epilog(config_dir: Path) -> str:
    """Return the help text on config files: the defaults file, the presets and an override example."""
    presets = sorted(p.stem for p in config_dir.glob("*.yaml") if p.name != "config.yaml")
    return (f"defaults (every valid key): {config_dir / 'config.yaml'}\n"
            f"presets for --config: {', '.join(presets) or 'none'}\n"
            f"override single keys as key=value, with dots for sections, e.g. "
            f"{_example_override(read_yaml(config_dir / 'config.yaml'))}")


def parse_stage_args(config_dir: Path, description: str, argv: Sequence[str] | None = None) -> tuple[Config, bool]:
    """Parse a stage script's command line and return (its resolved config, whether `--check` was given).

    `description` (the script's docstring) heads the `--help` text, which also lists the presets in
    `config_dir` and an override example that the stage's config.yaml has.
    """
    parser = argparse.ArgumentParser(description=description, epilog=_help_epilog(config_dir),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None, metavar="PRESET",
                        help="preset YAML: a name in the stage's config/ folder, or a path")
    parser.add_argument("--check", action="store_true", help=CHECK_HELP)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override one config key")
    args = parser.parse_args(argv)
    return load_config(config_dir, args.config, args.overrides), args.check
