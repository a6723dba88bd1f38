"""CAE checkpoints: what stage 3 writes, and the one loader that stage 4 and detect.py share.

A stage-3 checkpoint (format CAE_FORMAT) holds the model (`model`; `model_args`: `arch` and the
constructor arguments, see `wildcapture.cae.architectures`; checkpoints from before `arch` existed
are the paper's architecture with one channel), the heatmap preparation (`prep`: resize, norm), the
provenance of the heatmaps it learned (`heatmaps`, see `wildcapture.provenance.heatmap_provenance`,
or {"external": ...}), the resolved `config` and, in best.pth, the OOD `threshold`, the sorted val_id
scores it was set from (`val_scores`, which calibrate detect's unknown confidence) and (optional) the
`fusion` detector's entry (`wildcapture.ood.fusion`, with its own `val_scores`). A bare state
dict (the paper's AutoEncoderW.pt) loads too, as the paper's architecture.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torch import nn

from wildcapture.cae.architectures import build_cae, configured_settings, settings_of
from wildcapture.errors import CheckpointError, WeightsMismatchError
from wildcapture.storage import check_completed_file
from wildcapture.storage import load_checkpoint_with_digest

if TYPE_CHECKING:
    from wildcapture.ood.fusion import FusionDetector

CAE_FORMAT = "wildcapture-cae-2"
STAGE3_MARKER = "train_cae.complete.yaml"
PAPER_CAE = "AutoEncoder/AutoEncoder_Weights/AutoEncoderW.pt of github.com/lcultrera/WildCapture"


def cae_args_of_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Return the `model_args` {"arch": "paper", "input_size", "zdim", "in_channels"} of a bare state dict of
    the paper's CAE (its AutoEncoderW.pt)."""
    bottleneck = state_dict["encoder.final_convs.12.weight"]  # (zdim, 32, k, k) with k = input_size / 16
    return {"arch": "paper", "input_size": int(bottleneck.shape[-1]) * 16, "zdim": int(bottleneck.shape[0]),
            "in_channels": int(state_dict["encoder.0.weight"].shape[1])}


def load_cae(path: Path, cae_cfg: dict[str, Any] | None = None, require_complete: bool = False
             ) -> tuple[nn.Module, dict[str, Any]]:
    """Return the CAE stored at `path` (eval mode, CPU) and the checkpoint's metadata (everything but the
    weights, plus `path` and the file's `sha256`; only those two for a bare state dict).

    With `cae_cfg` (the config's `cae.*`), raises WeightsMismatchError naming the key and both values if the
    checkpoint was made with another arch, another argument of its architecture (`cae.<arch>.*`), resize or norm. A
    checkpoint of an older format is a CheckpointError that says to rerun stage 3. The file must be the one
    stage 3's completion marker beside it lists (when there is one; always with `require_complete`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CAE checkpoint not found: {path}; run stage 3 (AutoEncoder/train.py), or for the "
                                f"paper's CAE download {PAPER_CAE} and set test.checkpoint to it")
    obj, digest = load_checkpoint_with_digest(path)
    check_completed_file(path, STAGE3_MARKER, digest, require_complete, "stage 3 (AutoEncoder/train.py)")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds no CAE state dict")
    ours = "model_args" in obj
    if ours and obj.get("format") != CAE_FORMAT:
        raise CheckpointError(f"{path} is a CAE checkpoint of format {obj.get('format')!r}, not {CAE_FORMAT!r} "
                              "(it records no heatmap provenance): rerun stage 3 (AutoEncoder/train.py)")
    state = obj["model"] if ours else obj
    try:
        args = obj["model_args"] if ours else cae_args_of_state_dict(state)
    except KeyError as err:
        raise CheckpointError(f"{path} is not a CAE checkpoint (no {err} entry)") from err
    try:
        model = build_cae(**args)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot build a CAE from its model_args {args} ({err})") from err
    if cae_cfg is not None:
        _check_settings(path, settings_of(model, obj.get("prep", {})), cae_cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(line.strip() for line in str(err).splitlines()[:2])  # the header and the first difference
        raise WeightsMismatchError(f"{path} does not fit the CAE of {args}: {first}") from err
    meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer")} if ours else {}
    return model.eval(), {**meta, "path": str(path), "sha256": digest}


def _check_settings(path: Path, settings: dict[str, Any], cae_cfg: dict[str, Any]) -> None:
    """Raise WeightsMismatchError naming the first `cae.*` key whose config value differs from the checkpoint's."""
    configured = configured_settings(cae_cfg)
    for key, value in settings.items():
        if configured.get(key) != value:
            raise WeightsMismatchError(f"CAE checkpoint {path} was made with cae.{key}={value} but the config has "
                                       f"cae.{key}={configured.get(key)}; set cae.{key}={value}")


def fusion_of(ckpt: dict[str, Any]) -> "FusionDetector | None":
    """Return the fusion detector of a checkpoint's metadata (as `load_cae` returns it), or None when it has
    none; CheckpointError if its `fusion` entry cannot be used."""
    if "fusion" not in ckpt:
        return None
    from wildcapture.ood.fusion import FusionDetector  # the feature detectors, only where a fusion is used

    try:
        return FusionDetector.from_state(ckpt["fusion"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt['path']}: its fusion entry cannot be used ({type(err).__name__}: {err}); "
                              "rerun stage 3 (AutoEncoder/train.py)") from err


def sorted_scores(scores: np.ndarray) -> torch.Tensor:
    """The val_id scores (N,) as best.pth stores them: float64, ascending."""
    return torch.from_numpy(np.sort(np.asarray(scores, dtype=np.float64)))


def val_scores_of(ckpt: dict[str, Any], score: str) -> np.ndarray:
    """The sorted val_id scores best.pth stores for `score` ("cae" or "fusion"): float64 (N,); CheckpointError
    when it has none (stage 3 stored them from this version on)."""
    entry = ckpt.get("fusion", {}) if score == "fusion" else ckpt
    if "val_scores" not in entry:
        raise CheckpointError(f"{ckpt['path']} stores no val_id scores to calibrate the unknown confidence (stage 3 "
                              "keeps them in best.pth since they were added): use best.pth, or rerun stage 3 "
                              "(AutoEncoder/train.py)")
    return entry["val_scores"].numpy()
