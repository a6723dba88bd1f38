"""Stage 4: score every test image by its CAE reconstruction error and compare with the baselines.

Writes `results/<exp>/` (`recon_errors.pkl` and `.csv`: one entry per test image, RECON_COLUMNS; `ood_table.*`;
the ROC, histogram and gallery plots; the config; `score_cae.complete.yaml` last, with the CAE's SHA-256),
replaced only when the whole stage succeeded; every column in docs/outputs.md. The CAE must have learned
heatmaps of the same kind, block, classifier and preprocessing as the test heatmaps (their provenance), and
the baseline scores must come from the same stage-2 run as the heatmaps.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wildcapture.cae.engine import reconstruct
from wildcapture.cae.architectures import check_fits
from wildcapture.cae.checkpoint import fusion_of, load_cae
from wildcapture.cae.engine import CAEDetector
from wildcapture.cae.heatmap_data import RawHeatmaps
from wildcapture.cae.fusion_inputs import fused_test_scores
from wildcapture.cae.gallery import GalleryRow, plot_reconstruction_gallery
from wildcapture.cae.inputs import TEST_INPUTS, HeatmapSource, heatmap_source
from wildcapture.cae.settings import check_config
from wildcapture.config import Config
from wildcapture.data.build import build_splits
from wildcapture.data.protocol import TEST_ID, Protocol
from wildcapture.errors import DatasetError
from wildcapture.heatmap_store import SplitIndex, read_baseline_scores
from wildcapture.errors import IncompleteOutputError
from wildcapture.ood.fusion import FusionDetector
from wildcapture.ood.plots import plot_roc_curves, plot_score_histograms
from wildcapture.ood.table import ood_set_rows, to_markdown, write_table
from wildcapture.storage import Staging, read_marker, verify_file
from wildcapture.paths import baseline_scores_path, cae_checkpoint, portable_path, results_dir
from wildcapture.provenance import check_same_heatmaps
from wildcapture.run_lock import hold_lock
from wildcapture.runtime import pick_device
from wildcapture.storage import atomic_write, write_csv, write_yaml

STAGE = "score_cae"
RECON_COLUMNS = ("ids", "rows", "split", "ood_set", "labels", "class_names", "is_ood", "errors", "flagged_ood",
                 "fusion_scores", "fusion_flagged_ood")
FLOAT_COLUMNS = ("errors", "fusion_scores")
MARKER = f"{STAGE}.complete.yaml"
RERUN = "stage 4 (AutoEncoder/test_autoencoder.py)"


def write_recon_errors(result: dict[str, Any], out: Path) -> None:
    """Write `recon_errors.pkl` and its CSV twin `recon_errors.csv` atomically to `out`."""
    def write_pickle(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(out / "recon_errors.pkl", write_pickle)
    write_csv(out / "recon_errors.csv", RECON_COLUMNS,
              ([repr(float(result[c][i])) if c in FLOAT_COLUMNS else result[c][i] for c in RECON_COLUMNS]
               for i in range(len(result["errors"]))))


def read_recon_errors(path: Path) -> dict[str, Any]:
    """Return the dict `write_recon_errors` wrote to `path` (a `recon_errors.pkl`: RECON_COLUMNS, one entry
    per test image, plus `threshold` and `checkpoint`), after checking that the completion marker beside it
    lists the file with this SHA-256; IncompleteOutputError naming the file otherwise."""
    path = Path(path)
    verify_file(read_marker(path.parent / MARKER, (), RERUN), path.parent, path.name, RERUN)
    with open(path, "rb") as handle:
        result = pickle.load(handle)
    missing = [c for c in RECON_COLUMNS if c not in result]
    if missing:
        raise IncompleteOutputError(f"{path} lacks {', '.join(missing)}; rerun {RERUN}")
    return result


def _check_provenance(ckpt: dict[str, Any], source: HeatmapSource) -> None:
    """Refuse test heatmaps made otherwise than those the CAE learned; say so when it cannot be checked."""
    learned = ckpt.get("heatmaps")
    if not source.from_stage2 or not learned or "external" in learned:
        print("note: the CAE's training heatmaps or the test heatmaps are external files: their classifier and "
              "heatmap settings cannot be compared", flush=True)
        return
    check_same_heatmaps(learned, source.provenance(), f"the heatmaps CAE {ckpt['path']} learned",
                        f"the test heatmaps in {source.folder}",
                        "retrain the CAE on these heatmaps (AutoEncoder/train.py), or point heatmaps_dir/exp at "
                        "the heatmaps it was trained on")


def _test_splits(source: HeatmapSource) -> tuple[dict[str, Any], dict[str, SplitIndex]]:
    """The raw heatmaps and the index of each test split of the source's protocol; DatasetError when their lengths
    differ."""
    splits = source.protocol.test_splits
    raw = {s: source.heatmaps(s) for s in splits}
    index = {s: source.index(s) for s in splits}
    for s in splits:
        if len(index[s].sources) != len(raw[s]):
            raise DatasetError(f"split {s}: {len(raw[s])} heatmaps but {len(index[s].sources)} index rows")
    return raw, index


def _baseline_scores(cfg: Config, source: HeatmapSource) -> dict[str, dict[str, np.ndarray]]:
    """Stage 2's {detector: {test split: scores}}, or {} when off or the heatmaps are files."""
    if not cfg["test"]["baselines"]:
        return {}
    if not source.from_stage2:
        print("note: heatmaps from inputs.*: stage 2's baseline scores belong to other images and are left out",
              flush=True)
        return {}
    return read_baseline_scores(baseline_scores_path(cfg), source.meta)


def _gallery_images(source: HeatmapSource, index: dict[str, SplitIndex]):
    """The benchmark stage 2 tested, rebuilt from its data config, when its test splits hold exactly the images
    stage 2 wrote (`index`); else None (a note says why), and the gallery shows heatmaps only."""
    if not source.from_stage2:
        return None
    try:
        bench = build_splits(source.meta["data"], download=False)  # a gallery never downloads
    except DatasetError as err:
        print(f"note: the gallery shows heatmaps only: stage 2's data cannot be rebuilt ({err})", flush=True)
        return None
    for split, rows in index.items():
        if split not in bench.splits or bench.splits[split].sources != rows.sources:
            print(f"note: the gallery shows heatmaps only: split {split} of stage 2's data config no longer holds "
                  f"the {len(rows.sources)} images stage 2 wrote", flush=True)
            return None
    return bench


def _gallery(cfg: Config, detector: CAEDetector, raw: dict[str, Any], source: HeatmapSource,
             index: dict[str, SplitIndex], result: dict[str, Any], path: Path) -> None:
    """Plot the `test.gallery_size` most and least OOD test images."""
    n, errors = cfg["test"]["gallery_size"], result["errors"]
    if n == 0:
        return
    order = np.argsort(errors, kind="stable")
    picks = [*order[::-1][:n], *order[:n]]
    bench = _gallery_images(source, index)
    maps = np.stack([raw[result["split"][i]][result["rows"][i]] for i in picks])
    x = detector.prepare(maps)
    recons = reconstruct(detector.model, torch.from_numpy(maps), detector.prep, len(picks), "cpu").numpy()
    rows = []
    for rank, i in enumerate(picks):
        split, row = result["split"][i], result["rows"][i]
        image = bench.splits[split].load_image(row) if bench else None
        kind = "most" if rank < n else "least"
        rows.append(GalleryRow(f"{kind} OOD\n{split} {result['class_names'][i]}\nerror {errors[i]:.4g}", image,
                               maps[rank], x[rank].numpy(), recons[rank]))
    plot_reconstruction_gallery(rows, path, f"{cfg['exp']}: most and least OOD test images by CAE error")


def _recon_result(ckpt: dict[str, Any], protocol: Protocol, index: dict[str, SplitIndex], errors: dict[str, np.ndarray],
                  fusion: FusionDetector | None, fused: dict[str, np.ndarray]) -> dict[str, Any]:
    """The dict `write_recon_errors` writes: one entry per test image (test_id first, then each OOD set in the
    protocol's order), then the run's values."""
    splits = protocol.test_splits
    threshold = ckpt.get("threshold", float("nan"))
    if np.isnan(threshold):
        print(f"note: {ckpt['path']} stores no OOD threshold (not a stage-3 checkpoint): flagged_ood is all False",
              flush=True)
    all_errors = np.concatenate([errors[s] for s in splits])
    all_fused = np.concatenate([fused[s] for s in splits]) if fusion else np.full(len(all_errors), np.nan)
    fusion_threshold = fusion.threshold if fusion else float("nan")
    return {
        "ids": [i for s in splits for i in index[s].sources],
        "rows": [r for s in splits for r in range(len(errors[s]))],
        "split": [s for s in splits for _ in range(len(errors[s]))],
        "ood_set": [protocol.set_name(s) for s in splits for _ in range(len(errors[s]))],
        "labels": [lab for s in splits for lab in index[s].labels],
        "class_names": [c for s in splits for c in index[s].class_names],
        "is_ood": np.concatenate([np.full(len(errors[s]), protocol.is_ood(s), dtype=np.int64) for s in splits]),
        "errors": all_errors,
        "flagged_ood": all_errors > threshold,
        "fusion_scores": all_fused,
        "fusion_flagged_ood": all_fused > fusion_threshold,
        "threshold": threshold,
        "fusion_threshold": fusion_threshold,
        "fusion": fusion.name if fusion else None,
        "checkpoint": portable_path(ckpt["path"]),
    }


def outputs(cfg: Config) -> list[Path]:
    """The files a run writes in its results folder, the completion marker last."""
    names = ["config_test_autoencoder.yaml", "roc_curves.png", "score_histograms.png",
             *(["reconstruction_gallery.png"] if cfg["test"]["gallery_size"] else []), "recon_errors.pkl",
             "recon_errors.csv", "ood_table.md", "ood_table.csv", "ood_table.json", MARKER]
    return [results_dir(cfg) / name for name in names]


def check(cfg: Config) -> list[Path]:
    """Every check of `run` that needs no scoring, writing nothing: the config, the CAE checkpoint against it,
    the test heatmaps against the CAE (provenance and shape), stage 2's baseline scores, and the features the
    fusion detector scores. Returns `outputs(cfg)`."""
    check_config(cfg)
    inputs = _inputs(cfg, torch.device("cpu"))
    for split in inputs.raw:
        check_fits(inputs.detector.model, inputs.detector.prep, inputs.raw[split].shape, f"split {split}")
    if fusion_of(inputs.ckpt) is not None and inputs.source.from_stage2:
        for split in inputs.raw:
            inputs.source.features_and_logits(split)
    return outputs(cfg)


def run(cfg: Config) -> dict[str, Any]:
    """Run stage 4 for `cfg`; returns {"rows": the OOD table rows, "markdown": the table}."""
    check_config(cfg)
    device = pick_device(cfg["device"])
    out = results_dir(cfg)
    with hold_lock(out, f"stage 4 {STAGE}, exp {cfg['exp']}"):
        return _score(cfg, device, out)


@dataclass
class _Inputs:
    """What stage 4 scores, loaded and checked against each other."""

    ckpt: dict[str, Any]                 # the CAE checkpoint's entries (`load_cae`)
    source: HeatmapSource
    detector: CAEDetector
    raw: dict[str, RawHeatmaps]          # the test splits' raw heatmaps
    index: dict[str, SplitIndex]
    baselines: dict[str, dict[str, np.ndarray]]  # stage 2's scores of each test split


def _inputs(cfg: Config, device: torch.device) -> _Inputs:
    """Load the CAE checkpoint, the test heatmaps (checked against its provenance) and stage 2's baseline
    scores; the detector scores on `device`."""
    model, ckpt = load_cae(cae_checkpoint(cfg), cfg["cae"], require_complete=not cfg["test"]["checkpoint"])
    source = heatmap_source(cfg, TEST_INPUTS)
    _check_provenance(ckpt, source)
    prep = ckpt.get("prep", cfg["cae"])
    detector = CAEDetector(model, prep["resize"], prep["norm"], cfg["test"]["batch_size"], device)
    raw, index = _test_splits(source)
    return _Inputs(ckpt, source, detector, raw, index, _baseline_scores(cfg, source))


def _weights(weight: float) -> str:
    """The caption's words for the fusion's weights: none for the plain sum (0.5 each)."""
    return "" if weight == 0.5 else f", weighted {weight:g} (CAE) and {1 - weight:g}"


def _score(cfg: Config, device: torch.device, out: Path) -> dict[str, Any]:
    inputs = _inputs(cfg, device)
    ckpt, source, detector, raw, index, baselines = (inputs.ckpt, inputs.source, inputs.detector, inputs.raw,
                                                     inputs.index, inputs.baselines)
    protocol = source.protocol
    errors = {s: detector.score(raw[s], f"split {s}") for s in protocol.test_splits}
    detector.model.cpu()
    fusion, fused = fused_test_scores(ckpt, source, errors)
    result = _recon_result(ckpt, protocol, index, errors, fusion, fused)
    by_split = {detector.name: errors, **({fusion.name: fused} if fusion else {}), **baselines}
    scores = {name: (values[TEST_ID], {s.name: values[s.split] for s in protocol.ood_sets})
              for name, values in by_split.items()}
    rows = ood_set_rows(scores, {s.name: s.group for s in protocol.ood_sets})
    sets = ", ".join(f"{s.name} ({s.group}, {len(errors[s.split])} images)" for s in protocol.ood_sets)
    caption = (f"{cfg['exp']}: OOD detection on test_id ({len(errors[TEST_ID])} ID images) vs each OOD set: {sets}"
               + ("; a mean row averages a group's sets" if len(protocol.ood_sets) > 1 else "")
               + "; cae = CAE reconstruction error of the attention heatmaps"
               + (f"; {fusion.name} = the CAE error plus the {fusion.partner_name} score, each z-scored on val_id"
                  + _weights(fusion.zscore.weight) if fusion else ""))
    with Staging(out, STAGE, MARKER) as staging:
        write_yaml(staging.path("config_test_autoencoder.yaml"), cfg)
        plot_roc_curves(scores, staging.path("roc_curves.png"))
        plot_score_histograms(scores, staging.path("score_histograms.png"))
        _gallery(cfg, detector, raw, source, index, result, staging.path("reconstruction_gallery.png"))
        write_recon_errors(result, staging.dir)
        write_table(rows, staging.dir, caption=caption)
        staging.commit({"exp": cfg["exp"], "checkpoint": result["checkpoint"], "checkpoint_sha256": ckpt["sha256"],
                        "heatmaps_run_id": source.run_id})
    markdown = to_markdown(rows, caption)
    print(markdown, flush=True)
    return {"rows": rows, "markdown": markdown}
