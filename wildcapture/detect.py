"""Flag new images (a camera trap's latest shots, say) as in- or out-of-distribution.

The CAE checkpoint of stage 3 carries everything needed: the provenance of the heatmaps it learned
(the classifier's repository-relative path and SHA-256, architecture, class names, preprocessing,
heatmap kind and block) and the OOD threshold that accepts 95% of `val_id` images. The classifier
file is found relative to the repository (so a moved or cloned repository still works) and must
have the recorded SHA-256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wildcapture.cae.checkpoint import load_cae
from wildcapture.cae.detector import CAEDetector
from wildcapture.storage import write_csv
from wildcapture.classifier.data_setup import make_loader
from wildcapture.classifier.engine import autocast_context
from wildcapture.data import DatasetError, ImageSplit, build_transforms
from wildcapture.data.images import FileImages
from wildcapture.data.wildcapture_folders import list_images
from wildcapture.heatmaps import forward_with_heatmaps
from wildcapture.errors import CheckpointError
from wildcapture.provenance import locate_classifier
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


def load_detector(cae_path: Path, batch_size: int, device: torch.device
                  ) -> tuple[torch.nn.Module, CAEDetector, dict[str, Any]]:
    """Return (classifier, CAE detector, CAE checkpoint metadata) for the stage-3 checkpoint at `cae_path`.

    Raises CheckpointError if the checkpoint names no classifier (the paper's bare CAE, or one trained
    on external heatmap files), ProvenanceError if the classifier is missing or has changed.
    """
    cae, ckpt = load_cae(cae_path)
    source = ckpt.get("heatmaps") or {}
    if "classifier" not in source:
        raise CheckpointError(f"{cae_path} names no classifier (not trained by AutoEncoder/train.py on stage 2's "
                              "heatmaps), so detect.py cannot rebuild the pipeline")
    identity = source["classifier"]
    classifier = build_vit(identity["model_args"])
    load_weights(classifier, locate_classifier(identity, f"CAE {cae_path}"))
    detector = CAEDetector(cae, ckpt["prep"]["resize"], ckpt["prep"]["norm"], batch_size, device)
    return classifier.eval(), detector, ckpt


def detect(folder: Path, cae_path: Path, out_csv: Path, batch_size: int = 64, device: str = "cpu",
           threshold: float | None = None, workers: int = 0) -> list[dict[str, Any]]:
    """Score every image under `folder`; write and return one row per image (see COLUMNS).

    ood_score is the CAE reconstruction error (higher = more OOD); ood_flag = ood_score > threshold
    (default: the stage-3 threshold stored in the checkpoint). `workers` DataLoader processes decode
    and resize the images.
    """
    dev = torch.device(device)
    classifier, cae, ckpt = load_detector(cae_path, batch_size, dev)
    meta, threshold = ckpt["heatmaps"], ckpt["threshold"] if threshold is None else threshold
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
    scores = cae.score_heatmaps(torch.cat(heatmaps))
    probs = torch.cat(logits).softmax(1).numpy()
    names = meta["classifier"]["class_names"]
    rows = [{"image": str(p), "predicted_class": names[int(np.argmax(pr))], "confidence": float(pr.max()),
             "ood_score": float(s), "ood_flag": bool(s > threshold), "threshold": float(threshold)}
            for p, pr, s in zip(paths, probs, scores)]
    write_csv(out_csv, COLUMNS, ([row[c] for c in COLUMNS] for row in rows))
    return rows
