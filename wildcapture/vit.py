"""Building the timm Vision Transformer, loading classifier weights into it, and finding the classifier a
later stage names (`locate_classifier`, checked by SHA-256).

Accepted weight files: this project's checkpoints (`{"model": state_dict, "model_args": ...}`)
and the paper's released classifier (a state dict whose keys carry the prefix `modelVit.`; its
training script used `model_vit.`, and DistributedDataParallel adds `module.`).
"""
from __future__ import annotations

import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

from wildcapture.errors import ConfigError, ProvenanceError, WeightsMismatchError
from wildcapture.paths import resolve_path
from wildcapture.storage import load_checkpoint, load_checkpoint_with_digest

# Model config keys passed to timm.create_model when not null.
ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "reg_tokens",
             "drop_rate", "attn_drop_rate", "drop_path_rate")
WRAPPER_PREFIXES = ("module.", "modelVit.", "model_vit.")
HUB_PROBE_TIMEOUT_S = 5.0  # how long to wait for the Hugging Face Hub before saying the weights cannot be downloaded


def model_args_from_config(model_cfg: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Return the arguments that rebuild the model: timm name, class count and architecture overrides."""
    kwargs = {key: model_cfg[key] for key in ARCH_KEYS if model_cfg.get(key) is not None}
    return {"name": model_cfg["name"], "num_classes": num_classes, "kwargs": kwargs}


def build_vit(model_args: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """Return the timm model described by `model_args` (see `model_args_from_config`).

    With `pretrained`, timm's weights come from the local Hugging Face cache when they are there (no
    network access), else they are downloaded. Raises ConfigError for an unknown model name, and for
    weights that are neither cached nor downloadable (within seconds, not after a minute of retries).
    """
    if not pretrained:
        return _create(model_args, pretrained=False)
    try:
        with _hub_offline():
            return _create(model_args, pretrained=True)
    except LocalEntryNotFoundError:  # not in the cache
        pass
    reason = _hub_unreachable()
    if reason is None:
        try:
            return _create(model_args, pretrained=True)
        except LocalEntryNotFoundError as err:
            reason = str(err)
    raise ConfigError(
        f"the pretrained weights of timm model '{model_args['name']}' could not be downloaded ({reason}) and are "
        f"not in the local cache {hub_constants.HF_HUB_CACHE}: set model.pretrained=false to train from scratch, "
        "or model.init_weights=PATH (with model.pretrained=false) to start from a local weights file")


def _create(model_args: dict[str, Any], pretrained: bool) -> nn.Module:
    """Return `timm.create_model` for `model_args`; ConfigError naming model.name if timm does not know it."""
    try:
        return timm.create_model(model_args["name"], pretrained=pretrained,
                                 num_classes=model_args["num_classes"], **model_args["kwargs"])
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"unknown timm model '{model_args['name']}' (config key model.name); "
                              "list them with timm.list_models('vit_*')") from err
        raise


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Inside the `with` body, huggingface_hub reads its local cache only (its HF_HUB_OFFLINE mode)."""
    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _hub_unreachable() -> str | None:
    """Return why the Hugging Face Hub cannot be reached (offline mode, or no answer within
    HUB_PROBE_TIMEOUT_S seconds), or None when it answers. One try: huggingface_hub itself retries for a minute."""
    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    request = urllib.request.Request(hub_constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:  # an HTTP status is an answer
        return None
    except OSError as err:  # no route, refused, DNS failure, timeout
        return f"{hub_constants.ENDPOINT} did not answer: {getattr(err, 'reason', err)}"
    return None


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return `state_dict` with the DDP and paper-wrapper prefixes removed from its keys."""
    stripped = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        stripped[key] = value
    return stripped


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the model state dict held by a loaded weights file (bare, or under 'model'/'state_dict')."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise WeightsMismatchError("the file holds no model state dict (expected tensors, or a dict with a 'model' entry)")


def check_compatible(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise WeightsMismatchError naming the problem if `state_dict` does not fit `model` exactly."""
    expected = model.state_dict()
    head_key = "head.weight"
    if head_key in state_dict and head_key in expected and state_dict[head_key].shape[0] != expected[head_key].shape[0]:
        raise WeightsMismatchError(
            f"{source} has {state_dict[head_key].shape[0]} classes but the model has {expected[head_key].shape[0]} "
            "(the number of ID classes in the data config): make data.id_classes match the weights")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)})")
        raise WeightsMismatchError(f"{source} does not fit the model architecture: {'; '.join(parts)}. "
                                   "Check model.name and its overrides (img_size, patch_size, ...)")


def load_state(model: nn.Module, obj: Any, source: str) -> None:
    """Load the state dict held by `obj` (a loaded weights file) into `model`, strictly."""
    state_dict = strip_wrapper_prefixes(extract_state_dict(obj))
    check_compatible(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load a weights file (ours or the paper's) into `model`, strictly.

    Returns the whole loaded object (a dict) so callers can read its metadata.
    """
    obj = load_checkpoint(path)
    load_state(model, obj, f"weights file {path}")
    return obj if isinstance(obj, dict) else {}


def locate_classifier(identity: dict[str, Any], what: str) -> Any:
    """Return the loaded classifier checkpoint that `identity` (see `classifier_identity`) names, resolved
    against the repository root, after checking the SHA-256 of the bytes loaded. Raises ProvenanceError if
    it is missing or changed."""
    path = resolve_path(identity["path"])
    if not path.is_file():
        raise ProvenanceError(f"{what} was made with classifier {identity['path']}, which is not there ({path}); "
                              "put that file back, or retrain stages 2-3 with the classifier you have")
    obj, digest = load_checkpoint_with_digest(path)
    if digest != identity["sha256"]:
        raise ProvenanceError(f"classifier {path} has changed since {what} was made (SHA-256 {digest[:12]}... "
                              f"vs {identity['sha256'][:12]}...): rerun stages 2 and 3 for this classifier")
    return obj
