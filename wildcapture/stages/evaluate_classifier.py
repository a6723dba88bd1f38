"""Stage 2: evaluate the classifier and write, per split, heatmaps, logits, features and an index.

Outputs:
- `data/heatmaps/<exp>/heatmaps_meta.yaml`: the classifier, preprocessing, data config and heatmap
  kind these files came from (read by stages 3-4 and detect.py); written last, so it is present
  only after a complete run.
- `data/heatmaps/<exp>/<split>/`: `heatmaps.npy` (N x grid_h x grid_w float32), `logits.npy`
  (N x classes), `features.npy` (N x D, pre-logits), `index.csv` (row, source, label, class_name,
  pred, pred_name); row i of every file is the same image. Optionally `png/` + `heatmaps.csv`.
- `results/<exp>/`: `classifier_report.json`, `confusion_matrix.png` (test_id),
  `baseline_scores.csv` (MSP, MaxLogit, Energy, Mahalanobis, KNN, ViM per test image; higher = more
  OOD), `heatmap_gallery.png`, `config_test_classifier.yaml`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wildcapture.storage import load_checkpoint, save_array, write_csv
from wildcapture.classifier.data_setup import attach_transforms, input_spec, make_loader
from wildcapture.classifier.inference import SplitOutputs, infer_split
from wildcapture.classifier.report import classifier_report, write_report
from wildcapture.config import Config, ConfigError, save_config
from wildcapture.data import SPLITS, Benchmark, DatasetError, build_benchmark
from wildcapture.heatmaps import HEATMAP_KINDS, export_heatmap_pngs, plot_heatmap_gallery
from wildcapture.ood import fit_baselines, score_all
from wildcapture.paths import heatmaps_dir, resolve_path, results_dir
from wildcapture.runtime import pick_device, seed_everything
from wildcapture.vit import build_vit, load_state, model_args_from_config

INDEX_COLUMNS = ("row", "source", "label", "class_name", "pred", "pred_name")
META_NAME = "heatmaps_meta.yaml"


def load_classifier(cfg: Config) -> tuple[torch.nn.Module, Benchmark, dict[str, Any]]:
    """Return the classifier with its weights, the benchmark it is tested on, and a description
    of both: {"checkpoint", "model_args", "class_names", "input_spec", "data"}.

    Our checkpoints carry the model's constructor arguments, class names and data config; a bare
    state dict (the paper's weights) is rebuilt from `model.*` and `data.*` of the stage config.
    """
    path = resolve_path(cfg["checkpoint"] or f"weights/{cfg['exp']}/vit/best.pth")
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}; run stage 1 (Train_Vit_Classifier/train.py) "
                                f"for exp={cfg['exp']} or set checkpoint=PATH")
    obj = load_checkpoint(path)
    ours = isinstance(obj, dict) and "model_args" in obj
    data_cfg = obj["config"]["data"] if ours and cfg["data_from_checkpoint"] else cfg["data"]
    bench = build_benchmark(data_cfg, None, None)
    if ours and obj["class_names"] != bench.id_class_names:
        raise DatasetError(f"checkpoint {path} was trained on classes {obj['class_names']} but the data "
                           f"config gives {bench.id_class_names}; set data_from_checkpoint=true or fix data.id_classes")
    model_args = obj["model_args"] if ours else model_args_from_config(cfg["model"], len(bench.id_class_names))
    model = build_vit(model_args)
    load_state(model, obj, f"weights file {path}")
    spec = obj["input_spec"] if ours and cfg["data_from_checkpoint"] else input_spec(model, data_cfg)
    attach_transforms(bench, data_cfg, spec, augment_train=False)
    return model, bench, {"checkpoint": str(path), "model_args": model_args, "class_names": bench.id_class_names,
                          "input_spec": spec, "data": data_cfg}


def write_split(out: Path, outputs: SplitOutputs, split, class_names: list[str]) -> None:
    """Write the split's arrays and `index.csv` to `out`, each file atomically."""
    for name in ("heatmaps", "logits", "features"):
        save_array(getattr(outputs, name), out / f"{name}.npy")
    names = split.class_names
    write_csv(out / "index.csv", INDEX_COLUMNS,
              ((i, split.sources[i], int(split.labels[i]), names[i], int(pred), class_names[pred])
               for i, pred in enumerate(outputs.predictions)))


def write_baseline_scores(path: Path, bench: Benchmark, scores: dict[str, dict[str, np.ndarray]]) -> None:
    """Write one CSV row per test image: split, row, source, label, then one column per detector."""
    detectors = list(scores["test_id"])
    write_csv(path, ["split", "row", "source", "label", *detectors],
              ([name, i, bench.splits[name].sources[i], int(bench.splits[name].labels[i]),
                *(repr(float(scores[name][d][i])) for d in detectors)]
               for name in ("test_id", "test_ood") for i in range(len(bench.splits[name]))))


def _gallery(bench: Benchmark, outputs: dict[str, SplitOutputs], n: int, seed: int, path: Path) -> None:
    rng = np.random.default_rng(seed)
    picks = {s: rng.choice(len(bench.splits[s]), size=min(n, len(bench.splits[s])), replace=False)
             for s in ("test_id", "test_ood")}
    images = {s: [bench.splits[s].load_image(int(i)) for i in idx] for s, idx in picks.items()}
    titles = [bench.splits[s].class_names[int(i)] for s in ("test_id", "test_ood") for i in picks[s]]
    plot_heatmap_gallery(images["test_id"], outputs["test_id"].heatmaps[picks["test_id"]], images["test_ood"],
                         outputs["test_ood"].heatmaps[picks["test_ood"]], path, titles)


def run(cfg: Config) -> dict[str, Any]:
    """Run stage 2 for `cfg`; returns the classifier report of `test_id`."""
    if cfg["heatmap"]["kind"] not in HEATMAP_KINDS:
        raise ConfigError(f"unknown heatmap.kind '{cfg['heatmap']['kind']}'; choose one of {', '.join(HEATMAP_KINDS)}")
    seed_everything(cfg["seed"])
    device = pick_device(cfg["device"])
    model, bench, source = load_classifier(cfg)
    model.to(device)
    heat_cfg, out_heat, out_results = cfg["heatmap"], heatmaps_dir(cfg), results_dir(cfg)
    save_config(cfg, out_results / "config_test_classifier.yaml")
    meta_path = out_heat / META_NAME
    meta_path.unlink(missing_ok=True)  # written again last: its presence marks a complete stage-2 run
    print(f"stage 2: {bench.name}, splits {', '.join(f'{s} {len(bench.splits[s])}' for s in SPLITS)}; "
          f"heatmap {heat_cfg['kind']}; device {device}; writing to {out_heat} and {out_results}", flush=True)

    outputs: dict[str, SplitOutputs] = {}
    for name in SPLITS:
        split = bench.splits[name]
        if len(split) == 0:
            raise DatasetError(f"split {name} of {bench.name} is empty; raise data.val_fraction/test_fraction "
                               "or data.limit_per_split")
        loader = make_loader(split, cfg["batch_size"], None, cfg["num_workers"], device)
        outputs[name] = infer_split(model, loader, len(split), heat_cfg["kind"], heat_cfg["block"], device,
                                    cfg["amp"], desc=name)
        write_split(out_heat / name, outputs[name], split, bench.id_class_names)
        if heat_cfg["export_png"]:
            export_heatmap_pngs(outputs[name].heatmaps, out_heat / name / "png",
                                [f"{i:07d}" for i in range(len(split))], split.labels.tolist())

    test_id = bench.splits["test_id"]
    report = classifier_report(test_id.labels, outputs["test_id"].predictions, bench.id_class_names)
    write_report(report, out_results)
    print(f"test_id accuracy {report['accuracy']:.4f} over {report['n']} images", flush=True)

    train = outputs["train_id"]
    head = model.head
    detectors = fit_baselines(train.features, train.logits, bench.splits["train_id"].labels,
                              head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy(),
                              knn_k=cfg["baselines"]["knn_k"], vim_dim=cfg["baselines"]["vim_dim"],
                              device=str(device))
    scores = {s: score_all(detectors, outputs[s].features, outputs[s].logits) for s in ("test_id", "test_ood")}
    write_baseline_scores(out_results / "baseline_scores.csv", bench, scores)
    _gallery(bench, outputs, cfg["gallery_size"], cfg["seed"], out_results / "heatmap_gallery.png")
    save_config({**source, "heatmap": {"kind": heat_cfg["kind"], "block": heat_cfg["block"]}}, meta_path)
    return report
