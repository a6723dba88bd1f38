"""Score detections: the models of a run (`DetectionModels`: the stage-3 CAE checkpoint names the classifier,
checked by SHA-256, its preprocessing, the heatmap kind and block, the thresholds and the optional fusion
detector) and one process's shard of the items (`score_shard`), streaming.

Images flow decode (DataLoader workers) -> classifier logits, features and heatmaps (one forward pass)
-> CAE score (with `score="fusion"`, fused with the partner detector on the features and logits) -> rows
on disk, one batch at a time, checkpointed (`report.ShardProgress`); under torchrun each process scores
every world-th batch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from wildcapture.cae.checkpoint import fusion_of, load_cae, val_scores_of
from wildcapture.cae.engine import CAEDetector
from wildcapture.cae.engine import unknown_confidence
from wildcapture.data.images import load_rgb_at_least
from wildcapture.data.transforms import eval_transform
from wildcapture.detection.report import ROWS_FORMAT, ShardProgress, failure_row
from wildcapture.detection.season import Item, Scan
from wildcapture.errors import CheckpointError, DatasetError
from wildcapture.attention import forward_with_heatmaps
from wildcapture.vit import locate_classifier
from wildcapture.run_lock import clear_held
from wildcapture.runtime import DistState, make_loader, precision_context, resolve_precision, shard_indices
from wildcapture.vit import build_vit, load_state

if TYPE_CHECKING:
    from wildcapture.detection.review import ReviewPage
    from wildcapture.ood.fusion import FusionDetector


@dataclass
class DetectionModels:
    """The models of a detection run: the classifier, the CAE detector and what the CAE checkpoint says
    about them."""

    classifier: torch.nn.Module
    cae: CAEDetector
    provenance: dict[str, Any]  # the heatmaps the CAE learned: classifier, input_spec, heatmap, data
    threshold: float            # of the score in use
    cae_sha256: str             # of the CAE checkpoint file
    val_scores: np.ndarray      # the score's val_id scores, sorted (N,): calibrate the unknown confidence
    fusion: FusionDetector | None = None  # set when the score is the fusion detector's
    precision: str = "fp32"     # the classifier's, resolved (runtime.resolve_precision); the CAE runs in fp32

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CAE and the classifier files and the precision."""
        return hashlib.sha256((self.cae_sha256 + self.provenance["classifier"]["sha256"] + self.precision).encode()
                              ).hexdigest()

    @property
    def class_names(self) -> list[str]:
        """The classifier's class names, in its output order."""
        return self.provenance["classifier"]["class_names"]

    @property
    def score_name(self) -> str:
        """The name of the score in use: "cae", or the fusion detector's (e.g. "cae+mahalanobis")."""
        return self.fusion.name if self.fusion else self.cae.name

    def ood_scores(self, logits: torch.Tensor, features: torch.Tensor, heatmaps: torch.Tensor) -> np.ndarray:
        """OOD scores of a batch from its classifier outputs (N, C), (N, D), (N, h, w): float64 (N,)."""
        errors = self.cae.score(heatmaps.float())
        if self.fusion is None:
            return errors
        return self.fusion.score(errors, features.float().cpu().numpy(), logits.float().cpu().numpy())


def load_models(cae_path: Path, batch_size: int, device: torch.device, threshold: float | None = None,
                score: str = "cae", precision: str = "auto") -> DetectionModels:
    """Return the models of the stage-3 checkpoint at `cae_path` (on `device`, eval mode), scoring by
    `score` ("fusion", else the CAE's error; `DetectOptions.check` checks the option) with `threshold`, or
    else the threshold the checkpoint stores for that score; the classifier runs in `precision`
    (runtime.PRECISIONS, resolved for `device`), which may differ from the one the CAE's heatmaps were made
    in (docs/performance.md, "bf16 on the CPU", measures that mixing).

    Raises CheckpointError if the checkpoint names no classifier (the paper's bare CAE, or one trained
    on external heatmap files) or, for `score="fusion"`, holds no fusion detector; ProvenanceError if the
    classifier is missing or has changed.
    """
    cae, ckpt = load_cae(cae_path)
    source = ckpt.get("heatmaps") or {}
    if "classifier" not in source:
        raise CheckpointError(f"{cae_path} names no classifier (not trained by AutoEncoder/train.py on stage 2's "
                              "heatmaps), so detect.py cannot rebuild the pipeline")
    fusion = fusion_of(ckpt) if score == "fusion" else None
    if score == "fusion" and fusion is None:
        raise CheckpointError(f"{cae_path} holds no fusion detector (stage 3 stores one in best.pth unless "
                              "fusion.partner=null): use --score cae, or retrain the CAE with fusion.partner set")
    stored = fusion.threshold if fusion else ckpt.get("threshold")
    if threshold is None and stored is None:
        raise CheckpointError(f"{cae_path} stores no OOD threshold (stage 3 keeps it in best.pth): use best.pth, "
                              "or give --threshold")
    val_scores = val_scores_of(ckpt, score)
    classifier = build_vit(source["classifier"]["model_args"])
    load_state(classifier, locate_classifier(source["classifier"], f"CAE {cae_path}"), f"classifier of {cae_path}")
    resolved = resolve_precision(precision, device)
    scorer = CAEDetector(cae, ckpt["prep"]["resize"], ckpt["prep"]["norm"], batch_size, device)
    return DetectionModels(classifier.eval().to(device), scorer, source,
                           float(stored if threshold is None else threshold), ckpt["sha256"], val_scores,
                           fusion, resolved)


def _scored_rows(models: DetectionModels, items: Sequence[Item], indices: list[int], images: torch.Tensor,
                 device: torch.device) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Classify and score one batch of decoded images (item `indices`); returns their rows and the heatmaps
    the CAE scored, as shown (N, h, w) float32 (the channel mean of a multi-channel kind)."""
    heat = models.provenance["heatmap"]
    with torch.inference_mode(), precision_context(device, models.precision):
        logits, features, heatmaps = forward_with_heatmaps(models.classifier,
                                                           images.to(device, non_blocking=True), heat["kind"],
                                                           heat["block"])
    probs = logits.float().softmax(1).cpu().numpy().astype(np.float64)
    scores = models.ood_scores(logits, features, heatmaps)
    unknown = unknown_confidence(models.val_scores, scores)
    rows = []
    for row, index in enumerate(indices):
        best = int(np.argmax(probs[row]))
        rows.append({**_item_columns(items[index], index), "predicted_class": models.class_names[best],
                     "confidence": repr(float(probs[row, best])), "classifications": json.dumps(probs[row].tolist()),
                     "ood_score": repr(float(scores[row])), "ood_flag": bool(scores[row] > models.threshold),
                     "unknown_confidence": repr(float(unknown[row])), "failure": ""})
    shown = heatmaps.float()
    shown = shown.mean(1) if shown.dim() == 4 else shown
    return rows, shown.cpu().numpy()


def _item_columns(item: Item, index: int) -> dict[str, Any]:
    bbox = "" if item.bbox is None else json.dumps([round(v, 6) for v in item.bbox])
    return {"item": index, "image": item.image, "detection": item.detection, "bbox": bbox,
            "detection_conf": "" if item.conf is None else item.conf}


def _failed_row(item: Item, index: int, reason: str) -> dict[str, Any]:
    return failure_row(reason, **_item_columns(item, index))


def job_fingerprint(scan: Scan, models: DetectionModels, settings: dict[str, Any]) -> str:
    """SHA-256 of what decides a run's rows: the input, the models, the score, the threshold and `settings`."""
    digest = hashlib.sha256(json.dumps({**settings, "score": models.score_name, "rows": ROWS_FORMAT},
                                       sort_keys=True).encode())
    for part in (models.fingerprint, repr(models.threshold), scan.digest):
        digest.update(part.encode())
    return digest.hexdigest()


def score_shard(models: DetectionModels, items: Sequence[Item], work: Path, state: DistState, *, batch_size: int,
                workers: int, margin: float, checkpoint_every: int, device: torch.device, fingerprint: str,
                review: ReviewPage | None = None, decode: str = "cpu") -> Path:
    """Score this process's shard of `items`, continuing its checkpoint in `work`; returns its rows file.
    `review`, when given, gets the review-page images of each batch before its rows are checkpointed.
    `decode="gpu"` decodes JPEGs on `device` (`gpu_decode`); "cpu" in the DataLoader workers."""
    spec = models.provenance["input_spec"]
    eval_tf = eval_transform(spec["input_size"], spec["mean"], spec["std"], spec["interpolation"])
    dataset = DetectionImages(items, eval_tf, tuple(spec["input_size"]), margin)
    mine = shard_indices(len(items), batch_size, state)
    progress = ShardProgress(work, state.rank, fingerprint, checkpoint_every)
    done = progress.resume()
    if decode == "gpu":
        from wildcapture.detection.gpu_decode import device_batches  # nvJPEG: only when asked for

        loader = device_batches(dataset, mine[done:], batch_size, workers, device, spec)
    else:
        loader = make_loader(Subset(dataset, mine[done:]), batch_size, None, workers, device)
    bar = tqdm(total=len(mine), initial=done, desc=f"detect (process {state.rank})" if state.enabled else "detect",
               unit="crop", disable=not state.is_main)
    for images, indices, failures in loader:
        indices = indices.tolist()
        ok = [j for j, reason in enumerate(failures) if not reason]
        rows = [_failed_row(items[indices[j]], indices[j], failures[j]) for j in range(len(indices)) if failures[j]]
        if ok:
            scored, heatmaps = _scored_rows(models, items, [indices[j] for j in ok], images[ok], device)
            if review is not None:
                review.write_assets(scored, heatmaps)
            rows += scored
        progress.write_batch(sorted(rows, key=lambda r: r["item"]), len(indices))
        bar.update(len(indices))
    bar.close()
    progress.close()
    return progress.rows_path


def prepare_work_folder(work: Path, overwrite: bool, state: DistState) -> None:
    """Create the work folder of a run (its progress removed first with `overwrite`; the run lock stays),
    on the first process; the others wait for it."""
    if state.is_main:
        work.mkdir(parents=True, exist_ok=True)
        if overwrite:
            clear_held(work)
    if state.enabled:
        dist.barrier()


class DetectionImages(Dataset):
    """Items -> (3 x H x W float tensor, index, failure reason or "")."""

    def __init__(self, items: Sequence[Item], transform: Callable, input_size: tuple[int, int], margin: float):
        self.items, self.transform = items, transform
        self.input_size, self.margin = input_size, margin

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        item = self.items[index]
        try:
            image = load_rgb_at_least(item.path, item.bbox, self.input_size, self.margin)
        except DatasetError as err:
            return torch.zeros(3, *self.input_size), index, str(err)
        return self.transform(image), index, ""
