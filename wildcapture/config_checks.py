"""Range and choice checks of config values, run before a stage creates or changes any file.

Types are already checked when the config is loaded (`wildcapture.config`); these say which values
make sense, and name the key in a ConfigError when one does not.
"""
from __future__ import annotations

from typing import Any, Sequence

from wildcapture.errors import ConfigError


def value_at(cfg: dict[str, Any], key: str) -> Any:
    """Return the value of the dotted `key` (e.g. "train.lr") in `cfg`."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_number(cfg: dict[str, Any], key: str, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, integer: bool = False, optional: bool = False) -> None:
    """Raise ConfigError unless `key` holds a number (an int if `integer`) with minimum <= value,
    above < value and value <= maximum; null is accepted only when `optional`."""
    value = value_at(cfg, key)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
              f"<= {maximum}" if maximum is not None else ""]
    wanted = " ".join(f"{kind} {' and '.join(b for b in bounds if b)}".split()) + (" or null" if optional else "")
    numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (not numeric or isinstance(value, bool) or (minimum is not None and value < minimum)
            or (above is not None and value <= above) or (maximum is not None and value > maximum)
            or value != value):  # NaN
        raise ConfigError(f"config key {key} must be {wanted}, got {value!r}")


def check_choice(cfg: dict[str, Any], key: str, choices: Sequence[Any], optional: bool = False) -> None:
    """Raise ConfigError unless `key` holds one of `choices` (or null, when `optional`)."""
    value = value_at(cfg, key)
    if value not in choices and not (optional and value is None):
        listed = ", ".join(map(str, choices)) + (" or null" if optional else "")
        raise ConfigError(f"config key {key} must be one of {listed}; got {value!r}")


def check_positive_ints(cfg: dict[str, Any], *keys: str) -> None:
    """Raise ConfigError unless every key holds an integer >= 1 (epochs, batch sizes)."""
    for key in keys:
        check_number(cfg, key, minimum=1, integer=True)
