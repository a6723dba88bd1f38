"""A complete stage-2 experiment at real shapes, without the hours: attention-like synthetic heatmaps.

What it writes says what it is: the meta's data is {"synthetic": true, ...} (no benchmark rebuilds it, so stage
4's gallery shows heatmaps only) and its protocol is one OOD set, `synthetic` (source `synthetic`).

    python benchmarks/make_synthetic_experiment.py exp=NAME --model vit_base_patch16_224 --kind cls_all \\
        --n-train 5000 --n-val 500 --n-test 500 --n-ood 500 [--dtype float16] [--classes 10]
    python AutoEncoder/train.py exp=NAME && python AutoEncoder/test_autoencoder.py exp=NAME

Writes, through the project's own writers: a randomly initialised classifier of `--model` as a complete stage-1
run in `weights/NAME/vit/` (best.pth, config.yaml, marker), and stage 2's files in `data/heatmaps/NAME/`
(every split's heatmaps, logits, features and index at the model's real shapes, streamed a chunk at a time, and
the meta with provenance) and `results/NAME/` (baseline scores and marker). Heatmaps are per-channel softmaxes
over the patch grid around a class-dependent spot (OOD images: no spot); features are class means plus noise,
logits the model's own head on them. `heatmaps_dir=`, `results_dir=`, `output_dir=` move the folders.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wildcapture.classifier.data_setup import input_spec
from wildcapture.config import load_config
from wildcapture.data.protocol import ID_SPLITS, TRAIN_ID, Protocol
from wildcapture.heatmap_store import (HEATMAP_DTYPES, SplitArrays, SplitIndex, SplitWriter, commit_outputs,
                                       heatmaps_staging, results_staging, write_baseline_scores, write_index)
from wildcapture.attention import heatmap_channels, HEATMAP_KINDS
from wildcapture.ood.baselines import fit_detectors, score_all
from wildcapture.paths import REPO_ROOT, classifier_dir, heatmaps_dir, results_dir
from wildcapture.provenance import classifier_identity
from wildcapture.storage import load_checkpoint_with_digest, write_yaml
from wildcapture.training_run import TrainingRun
from wildcapture.vit import ARCH_KEYS, build_vit, model_args_from_config

CHUNK = 512  # images generated and written at a time
PROTOCOL = Protocol.from_record([{"name": "synthetic", "group": "near", "source": "synthetic"}])
DATA = {"synthetic": True, "made_by": "benchmarks/make_synthetic_experiment.py"}  # the meta's data: no benchmark


def _config(stage: str, items: Sequence[str]) -> dict[str, Any]:
    """Return the stage's default config with those of `items` whose top-level key it has."""
    folder = REPO_ROOT / stage / "config"
    keys = load_config(folder, None, [])
    return load_config(folder, None, [i for i in items if i.split("=", 1)[0].split(".")[0] in keys])


def write_classifier(cfg: dict[str, Any], class_names: list[str]) -> tuple[torch.nn.Module, Path, dict]:
    """Write a randomly initialised classifier as a complete stage-1 run; returns (model, best.pth, model_args)."""
    torch.manual_seed(cfg["seed"])
    model_args = model_args_from_config(cfg["model"], len(class_names))
    model = build_vit(model_args).eval()
    run = TrainingRun(classifier_dir(cfg), "train_classifier")
    run.start({**cfg, "train": {**cfg["train"], "resume": False}}, set())
    meta = {"model_args": model_args, "class_names": class_names, "input_spec": input_spec(model, cfg["data"]),
            "config": cfg, "model": model.state_dict(), "epoch": 0, "val_acc": 0.0}
    run.save("best.pth", meta)
    write_yaml(run.path("config.yaml"), cfg)
    run.commit({"exp": cfg["exp"], "epochs": 0, "best_val_acc": 0.0, "synthetic": True})
    return model, classifier_dir(cfg) / "best.pth", model_args


def synthetic_batch(rng: np.random.Generator, labels: np.ndarray, channels: int, grid: tuple[int, int],
                    head: tuple[np.ndarray, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (logits (B, K), features (B, D), heatmaps (B, C, h, w)) float32 for `labels` (B,) (-1 = OOD)."""
    b, (h, w) = len(labels), grid
    k = head[0].shape[0]
    means = np.random.default_rng(1).normal(0, 1, (k + 1, dim)).astype(np.float32)
    features = means[labels] + rng.standard_normal((b, dim), dtype=np.float32)
    logits = features @ head[0].T + head[1]
    yy, xx = np.mgrid[0:h, 0:w]
    spot = np.where(labels[:, None, None] >= 0, 3.0, 0.0) * np.exp(
        -(((yy - (labels % h)[:, None, None]) ** 2 + (xx - (labels * 3 % w)[:, None, None]) ** 2) / 4.0))
    raw = rng.standard_normal((b, channels, h * w), dtype=np.float32) + spot.reshape(b, 1, h * w)
    raw = np.exp(raw - raw.max(-1, keepdims=True))
    return logits, features, (raw / raw.sum(-1, keepdims=True)).reshape(b, channels, h, w).astype(np.float32)


def write_split(staging, name: str, n: int, n_classes: int, ood: bool, dtype: str, rng, shapes) -> SplitArrays:
    """Generate and write split `name` of `n` images a chunk at a time; returns its arrays memory-mapped."""
    labels = np.full(n, -1) if ood else np.arange(n) % n_classes
    writer = SplitWriter(staging, name, n, dtype)
    for start in range(0, n, CHUNK):
        writer.write(start, *synthetic_batch(rng, labels[start:start + CHUNK], *shapes))
    arrays = writer.close()
    classes = [f"class{i}" if i >= 0 else "ood" for i in labels]
    write_index(staging, name, SplitIndex([f"synthetic/{name}/{i:07d}" for i in range(n)], labels.tolist(), classes),
                arrays.predictions, [f"class{i}" for i in range(n_classes)])
    return arrays


def make_experiment(overrides: Sequence[str], model: str, kind: str, sizes: dict[str, int], n_classes: int,
                    dtype: str) -> dict[str, Path]:
    """Write the stage-1 and stage-2 outputs of a synthetic experiment (`sizes`: images per split of `PROTOCOL`);
    returns their folders."""
    arch = [f"model.name={model}", *(f"model.{key}=null" for key in ARCH_KEYS)]  # the model's own shapes
    cfg = _config("Train_Vit_Classifier", [*arch, *overrides])
    stage2 = _config("Test_Classifier", [f"heatmap.kind={kind}", *overrides])
    names = [f"class{i}" for i in range(n_classes)]
    vit, path, model_args = write_classifier(cfg, names)
    _, digest = load_checkpoint_with_digest(path)
    depth, heads = len(vit.blocks), vit.blocks[0].attn.num_heads
    grid = tuple(vit.patch_embed.grid_size)
    head = (vit.head.weight.detach().numpy(), vit.head.bias.detach().numpy())
    shapes = (heatmap_channels(kind, depth, heads), grid, head, vit.num_features)
    rng = np.random.default_rng(cfg["seed"])
    out_heat, out_results = heatmaps_dir(stage2), results_dir(stage2)
    with heatmaps_staging(out_heat) as heat, results_staging(out_results) as results:
        arrays = {s: write_split(heat, s, sizes[s], n_classes, PROTOCOL.is_ood(s), dtype, rng, shapes)
                  for s in PROTOCOL.splits}
        index = {s: SplitIndex([f"synthetic/{s}/{i:07d}" for i in range(sizes[s])], [], []) for s in PROTOCOL.splits}
        labels = np.arange(sizes[TRAIN_ID]) % n_classes
        detectors = fit_detectors({"features": arrays[TRAIN_ID].features, "logits": arrays[TRAIN_ID].logits,
                                   "labels": labels, "head": head}, {"knn": {"k": 50}})
        scores = {s: score_all(detectors, arrays[s]) for s in PROTOCOL.test_splits}
        for s in scores:
            index[s].labels = (np.full(sizes[s], -1) if PROTOCOL.is_ood(s) else np.arange(sizes[s]) % n_classes).tolist()
        write_baseline_scores(results.path("baseline_scores.csv"), index, scores, PROTOCOL)
        provenance = {"classifier": classifier_identity(path, digest, model_args, names),
                      "input_spec": input_spec(vit, cfg["data"]), "data": DATA,
                      "heatmap": {"kind": kind, "block": -1, "precision": "fp32", "dtype": dtype, "synthetic": True}}
        commit_outputs(heat, results, provenance, PROTOCOL, arrays, {"exp": cfg["exp"], "synthetic": True})
    return {"vit": classifier_dir(cfg), "heatmaps": out_heat, "results": out_results}


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Parse `argv`, write the experiment, print and return its folders."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--kind", default="cls_all", choices=[k for k in HEATMAP_KINDS if k != "rollout"])
    parser.add_argument("--dtype", default="float16", choices=HEATMAP_DTYPES)
    parser.add_argument("--classes", type=int, default=10)
    for split, default in (("train", 5000), ("val", 500), ("test", 500), ("ood", 500)):
        parser.add_argument(f"--n-{split}", type=int, default=default)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="exp=NAME, heatmaps_dir=..., seed=...")
    args = parser.parse_intermixed_args(argv)
    sizes = {**dict(zip(ID_SPLITS, (args.n_train, args.n_val, args.n_test))), PROTOCOL.ood_splits[0]: args.n_ood}
    folders = make_experiment(args.overrides, args.model, args.kind, sizes, args.classes, args.dtype)
    print("wrote " + ", ".join(f"{k} {v}" for k, v in folders.items()))
    return folders


if __name__ == "__main__":
    main()
