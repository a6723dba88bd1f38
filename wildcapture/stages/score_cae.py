"""Stage 4: score every test image by its CAE reconstruction error and compare with the baselines.

Outputs in `results/<exp>/`:
- `recon_errors.pkl`: a dict of equal-length lists/arrays, one entry per test image
  (`test_id` first, then `test_ood`): `ids` (source image), `rows` (row in the split's stage-2
  files), `split`, `labels` (ID class index, -1 for OOD), `class_names`, `is_ood` (0/1),
  `errors` (float64 mean squared reconstruction error per pixel: the OOD score), `flagged_ood`
  (errors > threshold); plus `threshold` (float) and `checkpoint` (str). `recon_errors.csv` has
  the same rows.
- `ood_table.{md,csv,json}`: AUROC, AUPR-IN, AUPR-OUT, FPR@95TPR for the CAE and every baseline.
- `roc_curves.png`, `score_histograms.png`, `reconstruction_gallery.png`, `config_test_autoencoder.yaml`.
"""
from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wildcapture.cae import ConvAutoencoder, prepare_heatmaps, reconstruct, reconstruction_errors
from wildcapture.cae.gallery import GalleryRow, plot_reconstruction_gallery
from wildcapture.storage import atomic_write, load_checkpoint, write_csv
from wildcapture.config import Config, save_config
from wildcapture.data import DatasetError, build_benchmark
from wildcapture.ood import ood_rows, plot_roc_curves, plot_score_histograms, to_markdown, write_table
from wildcapture.paths import resolve_path, results_dir
from wildcapture.runtime import pick_device
from wildcapture.stages.train_cae import (cae_dir, check_cae_settings, heatmap_source, heatmaps_meta, load_heatmaps_of,
                                          uses_external_heatmaps)
from wildcapture.vit import WeightsMismatchError

TEST_SPLITS = ("test_id", "test_ood")
CAE_NAME = "cae"


def cae_args_of_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Return {"input_size", "zdim"} of a bare CAE state dict (the paper's AutoEncoderW.pt)."""
    bottleneck = state_dict["encoder.final_convs.12.weight"]  # (zdim, 32, k, k) with k = input_size / 16
    return {"input_size": int(bottleneck.shape[-1]) * 16, "zdim": int(bottleneck.shape[0])}


def load_cae(cfg: Config) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Return the CAE of `test.checkpoint` (default: stage 3's best.pth) and the checkpoint's contents.

    Raises WeightsMismatchError if the checkpoint's input size, zdim or heatmap preparation differ
    from `cae.*` in the config.
    """
    check_cae_settings(cfg["cae"])
    path = resolve_path(cfg["test"]["checkpoint"] or cae_dir(cfg) / "best.pth")
    if not path.is_file():
        raise FileNotFoundError(f"CAE checkpoint not found: {path}; run stage 3 (AutoEncoder/train.py) first")
    obj = load_checkpoint(path)
    ours = "model_args" in obj
    state = obj["model"] if ours else obj
    args = obj["model_args"] if ours else cae_args_of_state_dict(state)
    settings = {**args, **obj.get("prep", {})}
    for key, value in settings.items():
        if cfg["cae"][key] != value:
            raise WeightsMismatchError(f"CAE checkpoint {path} was made with cae.{key}={value} but the config has "
                                       f"cae.{key}={cfg['cae'][key]}; set cae.{key}={value}")
    model = ConvAutoencoder(**args)
    model.load_state_dict(state, strict=True)
    return model, {**obj, "path": str(path)} if ours else {"path": str(path)}


def read_index(cfg: Config, split: str) -> dict[str, list]:
    """Return {"ids", "labels", "class_names"} of a split's heatmaps, from stage 2's index.csv or the
    heatmap CSV (columns img,label) it was read from."""
    source = heatmap_source(cfg, split)
    index_path = source.parent / "index.csv" if source.suffix == ".npy" else source
    if not index_path.is_file():
        raise FileNotFoundError(f"index of split {split} not found: {index_path}")
    with open(index_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if source.suffix == ".npy":
        return {"ids": [r["source"] for r in rows], "labels": [int(r["label"]) for r in rows],
                "class_names": [r["class_name"] for r in rows]}
    # A heatmap-image CSV (img,label): ids are the heatmap files; OOD items get label -1 like ours.
    return {"ids": [str((source.parent / r["img"]).resolve()) for r in rows],
            "labels": [-1 if split == "test_ood" else _as_label(r["label"]) for r in rows],
            "class_names": [r["label"] for r in rows]}


def _as_label(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def read_baseline_scores(path: Path, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {detector: (test_id scores, test_ood scores)} from stage 2's baseline_scores.csv."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    detectors = [c for c in rows[0] if c not in ("split", "row", "source", "label")] if rows else []
    scores = {}
    for name in detectors:
        per_split = [np.array([float(r[name]) for r in rows if r["split"] == s]) for s in TEST_SPLITS]
        if [len(a) for a in per_split] != [sizes[s] for s in TEST_SPLITS]:
            raise DatasetError(f"{path} has {[len(a) for a in per_split]} test_id/test_ood rows but the heatmaps have "
                               f"{[sizes[s] for s in TEST_SPLITS]}: rerun stage 2 so both come from the same pass")
        scores[name] = (per_split[0], per_split[1])
    return scores


def write_recon_errors(result: dict[str, Any], out: Path) -> None:
    """Write `recon_errors.pkl` and its CSV twin `recon_errors.csv` atomically to `out`."""
    def write_pickle(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)

    columns = ("ids", "rows", "split", "labels", "class_names", "is_ood", "errors", "flagged_ood")
    atomic_write(out / "recon_errors.pkl", write_pickle)
    write_csv(out / "recon_errors.csv", columns,
              ([repr(float(result[c][i])) if c == "errors" else result[c][i] for c in columns]
               for i in range(len(result["errors"]))))


def _gallery(cfg: Config, model: ConvAutoencoder, raw: dict[str, np.ndarray], prepared: dict[str, torch.Tensor],
             result: dict[str, Any], path: Path) -> None:
    """Plot the `test.gallery_size` most and least OOD test images."""
    n, errors = cfg["test"]["gallery_size"], result["errors"]
    order = np.argsort(errors, kind="stable")
    picks = [*order[::-1][:n], *order[:n]]
    meta = heatmaps_meta(cfg)  # {} for external heatmaps: no source images to show
    try:
        bench = build_benchmark(meta["data"], None, None) if meta.get("data") else None
    except DatasetError:
        bench = None  # images moved since stage 2: the gallery shows heatmaps only
    x = torch.cat([prepared[result["split"][i]][result["rows"][i]].unsqueeze(0) for i in picks])
    recons = reconstruct(model, x, len(picks), "cpu")[:, 0].numpy()
    rows = []
    for rank, i in enumerate(picks):
        split, row = result["split"][i], result["rows"][i]
        image = bench.splits[split].load_image(row) if bench else None
        kind = "most" if rank < n else "least"
        rows.append(GalleryRow(f"{kind} OOD\n{split} {result['class_names'][i]}\nerror {errors[i]:.4g}", image,
                               raw[split][row], x[rank, 0].numpy(), recons[rank]))
    plot_reconstruction_gallery(rows, path, f"{cfg['exp']}: most and least OOD test images by CAE error")


def run(cfg: Config) -> dict[str, Any]:
    """Run stage 4 for `cfg`; returns {"rows": the OOD table rows, "markdown": the printed table}."""
    device = pick_device(cfg["device"])
    model, ckpt = load_cae(cfg)
    model.to(device)
    cae_cfg, out = cfg["cae"], results_dir(cfg)
    save_config(cfg, out / "config_test_autoencoder.yaml")
    raw = {s: load_heatmaps_of(cfg, s) for s in TEST_SPLITS}
    prepared = {s: prepare_heatmaps(raw[s], cae_cfg["input_size"], cae_cfg["resize"], cae_cfg["norm"])
                for s in TEST_SPLITS}
    errors = {s: reconstruction_errors(model, prepared[s], cfg["test"]["batch_size"], device) for s in TEST_SPLITS}
    model.cpu()

    index = {s: read_index(cfg, s) for s in TEST_SPLITS}
    for s in TEST_SPLITS:
        if len(index[s]["ids"]) != len(errors[s]):
            raise DatasetError(f"split {s}: {len(errors[s])} heatmaps but {len(index[s]['ids'])} index rows")
    threshold = ckpt.get("threshold", float("nan"))
    if np.isnan(threshold):
        print(f"note: {ckpt['path']} stores no OOD threshold (not a stage-3 checkpoint): flagged_ood is all False",
              flush=True)
    all_errors = np.concatenate([errors[s] for s in TEST_SPLITS])
    result: dict[str, Any] = {
        "ids": [i for s in TEST_SPLITS for i in index[s]["ids"]],
        "rows": [r for s in TEST_SPLITS for r in range(len(errors[s]))],
        "split": [s for s in TEST_SPLITS for _ in range(len(errors[s]))],
        "labels": [lab for s in TEST_SPLITS for lab in index[s]["labels"]],
        "class_names": [c for s in TEST_SPLITS for c in index[s]["class_names"]],
        "is_ood": np.concatenate([np.full(len(errors[s]), s == "test_ood", dtype=np.int64) for s in TEST_SPLITS]),
        "errors": all_errors,
        "flagged_ood": all_errors > threshold,
        "threshold": threshold,
        "checkpoint": ckpt["path"],
    }

    scores = {CAE_NAME: (errors["test_id"], errors["test_ood"])}
    baseline_path = resolve_path(cfg["test"]["baseline_scores"] or out / "baseline_scores.csv")
    if cfg["test"]["baselines"] and uses_external_heatmaps(cfg):
        print("note: heatmaps from inputs.*: stage 2's baseline scores belong to other images and are left out",
              flush=True)
    elif cfg["test"]["baselines"] and baseline_path.is_file():
        scores.update(read_baseline_scores(baseline_path, {s: len(errors[s]) for s in TEST_SPLITS}))
    rows = ood_rows(scores)
    caption = (f"{cfg['exp']}: OOD detection on test_id ({len(errors['test_id'])} ID images) vs test_ood "
               f"({len(errors['test_ood'])} OOD images); cae = CAE reconstruction error of the attention heatmaps")
    plot_roc_curves(scores, out / "roc_curves.png")
    plot_score_histograms(scores, out / "score_histograms.png")
    _gallery(cfg, model, raw, prepared, result, out / "reconstruction_gallery.png")
    # the tables and scores last: they exist only when the whole stage succeeded
    write_recon_errors(result, out)
    write_table(rows, out, caption=caption)
    markdown = to_markdown(rows, caption)
    print(markdown, flush=True)
    return {"rows": rows, "markdown": markdown}
