"""Stage 2: evaluate the classifier and write, per split, heatmaps, logits, features and an index.

Outputs: `data/heatmaps/<exp>/` (per split `heatmaps.npy` in `heatmap.dtype`, `logits.npy`, `features.npy`,
`index.csv`, and `heatmaps_meta.yaml` last: what made them; formats in `wildcapture.heatmap_store`) and
`results/<exp>/` (`classifier_report.json`, `confusion_matrix.png`, `baseline_scores.csv`: every detector of
`ood.baselines.DETECTORS` per test image, the heatmap gallery, the config, and the marker last).
Everything is staged before the previous run's files are replaced. Under torchrun each process computes
every world-th batch and the main process writes what a single process would. A run whose heatmap
settings, classifier, preprocessing or data differ from the complete output there refuses to replace it
unless `overwrite=true`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wildcapture.classifier.data_setup import attach_transforms, input_spec
from wildcapture.runtime import make_loader
from wildcapture.classifier.inference import infer_split_sharded
from wildcapture.classifier.report import classifier_report, write_report
from wildcapture.config import Config
from wildcapture.config_checks import check_choice, check_number, check_positive_ints
from wildcapture.data.build import build_splits
from wildcapture.data.config import DATA_DEFAULTS, data_identity, resolve_data_cfg
from wildcapture.data.protocol import Protocol, TEST_ID, TRAIN_ID, resolve_protocol
from wildcapture.data.splits import DataSplits
from wildcapture.errors import DatasetError
from wildcapture.errors import ConfigError, IncompleteOutputError, ProvenanceError
from wildcapture.heatmap_store import (ARRAYS, HEATMAP_DTYPES, RESULTS_MARKER, SplitArrays, SplitIndex, SplitWriter,
                                       commit_outputs, heatmaps_staging,
                                       read_meta, results_staging, write_baseline_scores, write_head, write_index)
from wildcapture.attention import heatmap_channels, HEATMAP_KINDS
from wildcapture.heatmaps.export import export_heatmap_pngs
from wildcapture.heatmaps.gallery import plot_heatmap_gallery
from wildcapture.ood.baselines import fit_detectors, score_all
from wildcapture.storage import Staging, check_completed_file
from wildcapture.paths import HEATMAPS_META, classifier_checkpoint, heatmaps_dir, results_dir
from wildcapture.provenance import classifier_identity, heatmap_dtype, lookup
from wildcapture.runtime import heatmap_precision
from wildcapture.run_lock import hold_locks
from wildcapture.runtime import (PRECISIONS, DistState, cleanup_distributed, describe_precision, init_distributed,
                                 pick_device, resolve_precision, seed_everything)
from wildcapture.storage import load_checkpoint_with_digest, write_yaml
from wildcapture.vit import build_vit, load_state, model_args_from_config

STAGE1_MARKER = "train_classifier.complete.yaml"
PAPER_CLASSIFIER_URL = "https://drive.google.com/file/d/1sLRQfSZ03ByHjpkOIYxQSIsslHlm-Pvn/view"
# What a complete stage-2 output must share with a new run that replaces it (label, keys into the meta).
VARIANT_KEYS = (("heatmap.kind", ("heatmap", "kind")), ("heatmap.block", ("heatmap", "block")),
                ("heatmap.precision", ("heatmap", "precision")), ("heatmap.dtype", ("heatmap", "dtype")),
                ("classifier file", ("classifier", "path")),
                ("preprocessing", ("input_spec",)), ("data", ("data",)))


def check_config(cfg: Config) -> None:
    """Raise ConfigError (DatasetError for `data.*`) naming the first value stage 2 cannot use."""
    check_positive_ints(cfg, "batch_size", "baselines.knn_k")
    check_number(cfg, "num_workers", minimum=0, integer=True)
    check_number(cfg, "gallery_size", minimum=0, integer=True)
    check_number(cfg, "gallery_channel", integer=True, optional=True)
    check_number(cfg, "baselines.vim_dim", minimum=0, integer=True, optional=True)
    check_number(cfg, "heatmap.block", integer=True)
    check_choice(cfg, "heatmap.kind", HEATMAP_KINDS)
    check_choice(cfg, "heatmap.precision", PRECISIONS)
    check_choice(cfg, "heatmap.dtype", HEATMAP_DTYPES)
    pick_device(cfg["device"])
    resolve_data_cfg(cfg["data"])


def _missing_classifier(cfg: Config, path) -> FileNotFoundError:
    if cfg["checkpoint"]:
        return FileNotFoundError(
            f"classifier weights not found: {path} (config key checkpoint). The paper's released classifier "
            f"(modelTRANSFORMER_VIT) is published at {PAPER_CLASSIFIER_URL}: download it to "
            "weights/paper/modelTRANSFORMER_VIT; or train one with stage 1 (Train_Vit_Classifier/train.py)")
    return FileNotFoundError(f"classifier checkpoint not found: {path}; run stage 1 (Train_Vit_Classifier/train.py) "
                             f"for exp={cfg['exp']} or set checkpoint=PATH")


def load_classifier(cfg: Config, download: bool = True) -> tuple[torch.nn.Module, DataSplits, dict[str, Any]]:
    """Return the classifier with its weights, the benchmark it is tested on, and their provenance:
    {"classifier": `classifier_identity`, "input_spec", "data"}. Without `download`, missing data is an error
    naming its folder even where data.download is true.

    Our checkpoints carry the model's constructor arguments, class names and data config; a bare
    state dict (the paper's weights) is rebuilt from `model.*` and `data.*` of the stage config.
    """
    path = classifier_checkpoint(cfg)
    if not path.is_file():
        raise _missing_classifier(cfg, path)
    obj, digest = load_checkpoint_with_digest(path)
    check_completed_file(path, STAGE1_MARKER, digest, required=not cfg["checkpoint"],
                         what="stage 1 (Train_Vit_Classifier/train.py)")
    ours = isinstance(obj, dict) and "model_args" in obj
    from_checkpoint = ours and cfg["data_from_checkpoint"]
    asked = data_identity(cfg["data"])
    if from_checkpoint and asked not in (data_identity(DATA_DEFAULTS), data_identity(obj["config"]["data"])):
        raise ConfigError(f"data.* is set, but {path} carries the data config of its stage-1 run and "
                          "data_from_checkpoint=true uses that: set data_from_checkpoint=false to test on other data")
    data_cfg = resolve_data_cfg(obj["config"]["data"] if from_checkpoint else cfg["data"])
    bench = build_splits(data_cfg, download=download)
    if ours and obj["class_names"] != bench.id_class_names:
        raise DatasetError(f"checkpoint {path} was trained on classes {obj['class_names']} but the data "
                           f"config gives {bench.id_class_names}; set data_from_checkpoint=true or fix data.id_classes")
    model_args = obj["model_args"] if ours else model_args_from_config(cfg["model"], len(bench.id_class_names))
    model = build_vit(model_args)
    load_state(model, obj, f"weights file {path}")
    spec = obj["input_spec"] if from_checkpoint else input_spec(model, data_cfg)
    attach_transforms(bench, data_cfg, spec, augment_train=False)
    return model, bench, {"classifier": classifier_identity(path, digest, model_args, bench.id_class_names),
                          "input_spec": spec, "data": data_identity(data_cfg)}


def check_variant(out_heat, new: dict[str, Any], overwrite: bool) -> None:
    """Refuse (ProvenanceError naming both values) to replace the complete stage-2 output in `out_heat`
    with heatmaps of other settings, classifier file, preprocessing or data, unless `overwrite`."""
    try:
        old = read_meta(out_heat)
    except IncompleteOutputError:
        return  # nothing complete to protect
    for label, keys in VARIANT_KEYS:
        before, after = lookup(old, keys), lookup(new, keys)
        if keys == ("heatmap", "precision"):  # older metas recorded amp; unknown precision is not compared
            before, after = heatmap_precision(old), heatmap_precision(new)
            before = after if before is None else before
        if keys == ("heatmap", "dtype"):  # older metas stored float32 without saying so
            before, after = heatmap_dtype(old), heatmap_dtype(new)
        if before != after and not overwrite:
            raise ProvenanceError(
                f"{out_heat} holds heatmaps with {label} {before!r}; this run would replace them with {after!r}. "
                "Keep both by giving this variant its own experiment (exp=NEW_NAME, plus "
                "checkpoint=weights/<exp>/vit/best.pth to reuse a classifier), or set overwrite=true")


def check_gallery_channel(cfg: Config, model: torch.nn.Module) -> None:
    """Raise ConfigError unless `gallery_channel` is null or a channel of the heatmaps `model` gives for
    `heatmap.kind` (checked before inference)."""
    channel = cfg["gallery_channel"]
    count = heatmap_channels(cfg["heatmap"]["kind"], len(model.blocks), model.blocks[0].attn.num_heads)
    if channel is not None and not -count <= channel < count:
        raise ConfigError(f"config key gallery_channel={channel} is out of range for heatmap.kind="
                          f"{cfg['heatmap']['kind']} with {count} channel(s); valid values are null "
                          f"(the channel mean) or {-count}..{count - 1}")


def _gallery(bench: DataSplits, outputs: dict[str, SplitArrays], cfg: Config, input_size: list[int], path) -> None:
    """Plot `gallery_size` random test_id images and as many OOD images, drawn from every OOD set in turn
    (seeded by `seed`), with their heatmaps."""
    rng = np.random.default_rng(cfg["seed"])
    ood_splits = bench.protocol.ood_splits
    n_ood = [len(range(k, cfg["gallery_size"], len(ood_splits))) for k in range(len(ood_splits))]
    counts = {TEST_ID: cfg["gallery_size"], **dict(zip(ood_splits, n_ood))}
    picks = {s: rng.choice(len(bench.splits[s]), size=min(n, len(bench.splits[s])), replace=False)
             for s, n in counts.items()}
    images = {s: [bench.splits[s].load_image(int(i)) for i in idx] for s, idx in picks.items()}
    titles = [(f"{bench.protocol.set_name(s)}: " if bench.protocol.is_ood(s) else "") + bench.splits[s].class_names[int(i)]
              for s in picks for i in picks[s]]
    maps = {s: np.asarray(outputs[s].heatmaps[idx], np.float32) for s, idx in picks.items()}
    ood_images = [im for s in ood_splits for im in images[s]]
    ood_maps = np.concatenate([maps[s] for s in ood_splits])
    plot_heatmap_gallery(images[TEST_ID], maps[TEST_ID], ood_images, ood_maps, path, titles, input_size=input_size,
                         channel=cfg["gallery_channel"])


def run(cfg: Config) -> dict[str, Any] | None:
    """Run stage 2 for `cfg`; returns the classifier report of `test_id` (None on the other processes of a
    torchrun job, which compute their share of the batches; the main process checks, locks and writes)."""
    check_config(cfg)
    state, device = init_distributed(cfg["device"])
    out_heat, out_results = heatmaps_dir(cfg), results_dir(cfg)
    try:
        with (hold_locks([out_heat, out_results], f"stage 2 evaluate_classifier, exp {cfg['exp']}")
              if state.is_main else contextlib.nullcontext()):
            return _evaluate(cfg, state, device, out_heat, out_results)
    finally:
        cleanup_distributed()


def outputs(cfg: Config, protocol: Protocol | None = None) -> list[Path]:
    """The files a run writes: the heatmaps' folder (its meta last), then the results folder (its marker last).
    `protocol` names the splits (None: the protocol of the config's `data` section)."""
    heat, results = heatmaps_dir(cfg), results_dir(cfg)
    splits = (protocol or resolve_protocol(resolve_data_cfg(cfg["data"]))).splits
    arrays = [heat / split / name for split in splits for name in (*(f"{a}.npy" for a in ARRAYS), "index.csv")]
    pngs = [heat / split / "png" for split in splits] if cfg["heatmap"]["export_png"] else []
    report = ["classifier_report.json", "confusion_matrix.png", "baseline_scores.csv",
              *(["heatmap_gallery.png"] if cfg["gallery_size"] else []), "config_test_classifier.yaml",
              RESULTS_MARKER]
    return [*arrays, *pngs, heat / HEATMAPS_META, *(results / name for name in report)]


def check(cfg: Config) -> list[Path]:
    """Every check of `run` that needs no inference, writing nothing: the config, the classifier file and its
    provenance, the data (never downloaded), the heatmap settings against the model and against a complete
    output already there. Returns `outputs(cfg)` for the benchmark's protocol."""
    check_config(cfg)
    _, bench, _, _ = _setup(cfg, pick_device(cfg["device"]), is_main=True, download=False)
    return outputs(cfg, bench.protocol)


def _setup(cfg: Config, device: torch.device, is_main: bool, download: bool = True
           ) -> tuple[torch.nn.Module, DataSplits, dict[str, Any], str]:
    """The classifier, its benchmark, the provenance of the heatmaps to make and the precision resolved, after
    every check that needs no inference (on the main process, that a complete output there is not replaced by
    another variant)."""
    model, bench, source = load_classifier(cfg, download)
    heat_cfg = cfg["heatmap"]
    depth = len(model.blocks)
    if not -depth <= heat_cfg["block"] < depth:
        raise ConfigError(f"heatmap.block={heat_cfg['block']} is out of range for a classifier with {depth} blocks; "
                          f"valid values are {-depth}..{depth - 1}")
    check_gallery_channel(cfg, model)
    precision = resolve_precision(heat_cfg["precision"], device)
    provenance = {**source, "heatmap": {"kind": heat_cfg["kind"], "block": heat_cfg["block"], "precision": precision,
                                         "dtype": heat_cfg["dtype"]}}
    if is_main:
        check_variant(heatmaps_dir(cfg), provenance, cfg["overwrite"])
    empty = [name for name in bench.protocol.splits if len(bench.splits[name]) == 0]
    if empty:
        raise DatasetError(f"split(s) {', '.join(empty)} of {bench.name} are empty; raise data.val_fraction/"
                           "test_fraction or data.limit_per_split")
    return model, bench, provenance, precision


def _evaluate(cfg: Config, state: DistState, device: torch.device, out_heat, out_results) -> dict[str, Any] | None:
    seed_everything(cfg["seed"])
    model, bench, provenance, precision = _setup(cfg, device, state.is_main)
    heat_cfg = cfg["heatmap"]
    model.to(device)
    if state.is_main:
        print(f"stage 2: {bench.name}, splits {', '.join(f'{s} {len(bench.splits[s])}' for s in bench.protocol.splits)}; "
              f"heatmap {heat_cfg['kind']}; device {device}, {describe_precision(heat_cfg['precision'], precision, device)}"
              f", {state.world_size} process(es); writing to {out_heat} "
              f"and {out_results}", flush=True)

    def infer(name: str, sink) -> SplitArrays | None:
        return infer_split_sharded(model, bench.splits[name], cfg["batch_size"],
                                   lambda ds, bs: make_loader(ds, bs, None, cfg["num_workers"], device),
                                   heat_cfg["kind"], heat_cfg["block"], device, state, precision, desc=name, sink=sink)

    if not state.is_main:
        for name in bench.protocol.splits:
            infer(name, None)
        return None
    with heatmaps_staging(out_heat) as heat_stage, results_staging(out_results) as result_stage:
        outputs = {}
        for name in bench.protocol.splits:  # each split straight into its .npy files in the staging folder
            writer = SplitWriter(heat_stage, name, len(bench.splits[name]), heat_cfg["dtype"])
            infer(name, writer.write)
            outputs[name] = writer.close()
        return _write_outputs(cfg, device, model, bench, provenance, outputs, heat_stage, result_stage)


def _write_outputs(cfg: Config, device: torch.device, model: torch.nn.Module, bench: DataSplits,
                   provenance: dict[str, Any], outputs: dict[str, SplitArrays], heat_stage: Staging,
                   result_stage: Staging) -> dict[str, Any]:
    """Write every output but the split arrays (`outputs`: memory-mapped from `heat_stage`, already written)
    into the two staging areas, then commit them (heatmaps' meta last)."""
    heat_cfg = cfg["heatmap"]
    write_yaml(result_stage.path("config_test_classifier.yaml"), cfg)
    index: dict[str, SplitIndex] = {}
    for name in bench.protocol.splits:
        split = bench.splits[name]
        index[name] = SplitIndex(split.sources, split.labels.tolist(), split.class_names)
        write_index(heat_stage, name, index[name], outputs[name].predictions, bench.id_class_names)
        if heat_cfg["export_png"]:
            export_heatmap_pngs(outputs[name].heatmaps, heat_stage.dir / name / "png",
                                [f"{i:07d}" for i in range(len(split))], split.labels.tolist())

    test_id = bench.splits[TEST_ID]
    report = classifier_report(test_id.labels, outputs[TEST_ID].predictions, bench.id_class_names)
    write_report(report, result_stage.dir)
    print(f"test_id accuracy {report['accuracy']:.4f} over {report['n']} images", flush=True)

    train = outputs[TRAIN_ID]
    head = (model.head.weight.detach().cpu().numpy(), model.head.bias.detach().cpu().numpy())
    write_head(heat_stage, *head)
    detectors = fit_detectors({"features": train.features, "logits": train.logits,
                               "labels": bench.splits[TRAIN_ID].labels, "head": head},
                              {"knn": {"k": cfg["baselines"]["knn_k"], "device": str(device)},
                               "vim": {"dim": cfg["baselines"]["vim_dim"]}})
    scores = {s: score_all(detectors, outputs[s]) for s in bench.protocol.test_splits}
    write_baseline_scores(result_stage.path("baseline_scores.csv"), index, scores, bench.protocol)
    if cfg["gallery_size"]:
        _gallery(bench, outputs, cfg, provenance["input_spec"]["input_size"], result_stage.path("heatmap_gallery.png"))

    commit_outputs(heat_stage, result_stage, provenance, bench.protocol, outputs, {"exp": cfg["exp"]})
    return report
