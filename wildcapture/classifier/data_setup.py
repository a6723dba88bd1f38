"""The preprocessing a classifier expects, attached to a benchmark's splits (stages 1 and 2)."""
from __future__ import annotations

from typing import Any

from torch import nn

from wildcapture.data.splits import DataSplits
from wildcapture.data.transforms import build_transforms
from wildcapture.data.protocol import TRAIN_ID


def input_spec(model: nn.Module, data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Return the preprocessing the model expects: {"input_size": (H, W), "mean", "std", "interpolation"}.

    `data.mean`, `data.std` and `data.interpolation` override the model's own when set.
    """
    pretrained_cfg = getattr(model, "pretrained_cfg", {}) or {}
    height, width = model.patch_embed.img_size
    return {
        "input_size": [int(height), int(width)],
        "mean": list(data_cfg.get("mean") or pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(data_cfg.get("std") or pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": data_cfg.get("interpolation") or pretrained_cfg.get("interpolation", "bicubic"),
    }


def attach_transforms(bench: DataSplits, data_cfg: dict[str, Any], spec: dict[str, Any],
                      augment_train: bool = True) -> None:
    """Give every split plain resizing and normalisation, in place; `train_id` also gets the
    train-time augmentation when `augment_train`."""
    train_tf, eval_tf = build_transforms(data_cfg, tuple(spec["input_size"]), spec["mean"], spec["std"],
                                         spec["interpolation"])
    for name, split in bench.splits.items():
        split.transform = train_tf if name == TRAIN_ID and augment_train else eval_tf
