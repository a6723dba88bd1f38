"""Flag new images (a camera trap's latest shots, say) as in- or out-of-distribution.

The CAE checkpoint of stage 3 carries everything needed: the classifier it was trained behind
(checkpoint path, architecture, class names, preprocessing, heatmap kind) and the OOD threshold
that accepts 95% of `val_id` images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wildcapture.cae import ConvAutoencoder, prepare_heatmaps, reconstruction_errors
from wildcapture.storage import load_checkpoint, write_csv
from wildcapture.classifier.data_setup import make_loader
from wildcapture.classifier.engine import autocast_context
from wildcapture.data import DatasetError, ImageSplit, build_transforms
from wildcapture.data.images import FileImages
from wildcapture.data.wildcapture_folders import list_images
from wildcapture.heatmaps import forward_with_heatmaps
from wildcapture.paths import resolve_path
from wildcapture.vit import build_vit, load_weights

COLUMNS = ("image", "predicted_class", "confidence", "ood_score", "ood_flag", "threshold")


def list_folder_images(folder: Path) -> list[Path]:
    """Return every image file (jpg, jpeg, png; any case) under `folder`, recursively, sorted."""
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    images = list_images(folder)
    if not images:
        raise DatasetError(f"no .jpg/.jpeg/.png images in {folder}")
    return images


def load_detector(cae_path: Path) -> tuple[torch.nn.Module, ConvAutoencoder, dict[str, Any]]:
    """Return (classifier, CAE, CAE checkpoint contents) for the stage-3 checkpoint at `cae_path`."""
    obj = load_checkpoint(cae_path)
    meta = obj.get("heatmaps") or {}
    if "model_args" not in obj or "checkpoint" not in meta:
        raise ValueError(f"{cae_path} is not a stage-3 checkpoint of this project (it names no classifier); "
                         "train the CAE with AutoEncoder/train.py after stage 2")
    classifier = build_vit(meta["model_args"])
    load_weights(classifier, resolve_path(meta["checkpoint"]))
    cae = ConvAutoencoder(**obj["model_args"])
    cae.load_state_dict(obj["model"], strict=True)
    return classifier.eval(), cae.eval(), obj


def detect(folder: Path, cae_path: Path, out_csv: Path, batch_size: int = 64, device: str = "cpu",
           threshold: float | None = None, workers: int = 0) -> list[dict[str, Any]]:
    """Score every image under `folder`; write and return one row per image (see COLUMNS).

    ood_score is the CAE reconstruction error (higher = more OOD); ood_flag = ood_score > threshold
    (default: the stage-3 threshold stored in the checkpoint). `workers` DataLoader processes decode
    and resize the images.
    """
    dev = torch.device(device)
    classifier, cae, obj = load_detector(cae_path)
    meta, threshold = obj["heatmaps"], obj["threshold"] if threshold is None else threshold
    spec = meta["input_spec"]
    _, eval_tf = build_transforms(meta["data"], tuple(spec["input_size"]), spec["mean"], spec["std"],
                                  spec["interpolation"])
    paths = list_folder_images(folder)
    split = ImageSplit([str(p) for p in paths], [-1] * len(paths), [""] * len(paths), FileImages(), eval_tf)
    classifier.to(dev)
    logits, heatmaps = [], []
    with torch.inference_mode():
        for images, _ in tqdm(make_loader(split, batch_size, None, workers, dev), desc="classify", leave=False):
            with autocast_context(dev, True):
                batch_logits, _, batch_heatmaps = forward_with_heatmaps(
                    classifier, images.to(dev), meta["heatmap"]["kind"], meta["heatmap"]["block"])
            logits.append(batch_logits.float().cpu())
            heatmaps.append(batch_heatmaps.cpu())
    prep = obj["prep"]
    x = prepare_heatmaps(torch.cat(heatmaps), cae.input_size, prep["resize"], prep["norm"])
    scores = reconstruction_errors(cae.to(dev), x, batch_size, dev)
    probs = torch.cat(logits).softmax(1).numpy()
    names = meta["class_names"]
    rows = [{"image": str(p), "predicted_class": names[int(np.argmax(pr))], "confidence": float(pr.max()),
             "ood_score": float(s), "ood_flag": bool(s > threshold), "threshold": float(threshold)}
            for p, pr, s in zip(paths, probs, scores)]
    write_csv(out_csv, COLUMNS, ([row[c] for c in COLUMNS] for row in rows))
    return rows
