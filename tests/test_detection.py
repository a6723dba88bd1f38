"""detect.py over a MegaDetector file and folders: rows equal a hand computation on the same pixels,
the JSON keeps every image, bad files are failure rows, and a resumed or 2-process run equals one run."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attention_reference import manual_attention
from PIL import Image

from wildcapture.cae.checkpoint import load_cae
from wildcapture.data.images import load_rgb
from wildcapture.data.transforms import build_transforms
from detect_helpers import interrupted_detect
from wildcapture.detection import engine
from wildcapture.detection.report import ShardProgress
from wildcapture.detection.report import COLUMNS
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.detection.season import Scan
from wildcapture.errors import CheckpointError, ConfigError, DatasetError
from wildcapture.megadetector import pixel_box
from wildcapture.paths import REPO_ROOT, resolve_path
from wildcapture.storage import load_checkpoint
from wildcapture.vit import build_vit

CPU = DetectOptions(batch_size=2, device="cpu")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _image(path: Path, seed: int, size=(64, 48)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _box(x, y, w, h, conf, category="1"):
    return {"category": category, "conf": conf, "bbox": [x, y, w, h]}


@pytest.fixture
def megadetector_file(tmp_path):
    """Four PNGs and a MegaDetector file: two animal boxes, a low-confidence box and a person in a.png;
    an empty b.png; a failure for c.png; one animal box in sub/d.png."""
    (tmp_path / "sub").mkdir()
    for seed, name in enumerate(("a.png", "b.png", "c.png", "sub/d.png")):
        _image(tmp_path / name, seed)
    document = {
        "info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [
            {"file": "a.png", "detections": [_box(0.1, 0.1, 0.5, 0.6, 0.91), _box(0.5, 0.3, 0.4, 0.5, 0.45),
                                             _box(0.0, 0.0, 0.3, 0.3, 0.1), _box(0.2, 0.2, 0.5, 0.5, 0.95, "2")]},
            {"file": "b.png", "detections": []},
            {"file": "c.png", "failure": "Failure image access", "detections": None},
            {"file": "sub/d.png", "detections": [_box(0.25, 0.0, 0.5, 1.0, 0.3)]},
        ],
    }
    path = tmp_path / "md.json"
    path.write_text(json.dumps(document))
    return path


def _attention_maps(classifier: torch.nn.Module, image: torch.Tensor, kind: str, block: int) -> torch.Tensor:
    """Return the CLS-to-patch attention maps of `kind` from `manual_attention`: (1, h, w) for cls_last (head
    mean of `block`), (1, heads, h, w) for cls_heads, (1, depth * heads, h, w) for cls_all (block-major)."""
    assert kind in ("cls_last", "cls_heads", "cls_all"), f"no reference for heatmap kind {kind}"
    depth, prefix = len(classifier.blocks), classifier.num_prefix_tokens
    blocks = range(depth) if kind == "cls_all" else [block % depth]
    cls_rows = torch.cat([manual_attention(classifier, image, b)[:, :, 0, prefix:] for b in blocks], dim=1)
    maps = cls_rows.reshape(1, cls_rows.shape[1], *classifier.patch_embed.grid_size)
    return maps.mean(1) if kind == "cls_last" else maps


def _cae_input(maps: torch.Tensor, size: int | None, resize: str, norm: str) -> torch.Tensor:
    """Return maps (N, h, w) or (N, C, h, w) as the CAE's input (N, C, S, S): resized to size x size (the
    paper's CAE; None keeps the grid), then each map divided by its max (norm "max"), mapped to [0, 1] ("minmax")
    or left as it is ("none"); a map with max (max - min) 0 becomes zeros."""
    x = (maps[:, None] if maps.ndim == 3 else maps).float()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if resize == "bilinear"
             else F.interpolate(x, size=(size, size), mode="nearest-exact"))
    lo = x.amin(dim=(-2, -1), keepdim=True) if norm == "minmax" else torch.zeros(())
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return x if norm == "none" else torch.where(span > 0, (x - lo) / span, torch.zeros(()))


def _reference_scores(cae_path: Path, image: Image.Image) -> tuple[np.ndarray, float, np.ndarray]:
    """Class probabilities, CAE score and pre-logit features (D,) of one decoded RGB image, computed without the
    detector's code: a plain forward pass of the classifier, the heatmap from attention recomputed outside timm's
    Attention, the CAE input prepared here, and the score mean((x - CAE(x))^2) over channels and pixels."""
    cae, ckpt = load_cae(cae_path)
    source = ckpt["heatmaps"]
    classifier = build_vit(source["classifier"]["model_args"]).eval()
    classifier.load_state_dict(load_checkpoint(resolve_path(source["classifier"]["path"]))["model"])
    spec = source["input_spec"]
    _, eval_tf = build_transforms(source["data"], tuple(spec["input_size"]), spec["mean"], spec["std"],
                                  spec["interpolation"])
    args = ckpt["model_args"]
    with torch.no_grad():
        x = eval_tf(image)[None]
        features = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        maps = _attention_maps(classifier, x, source["heatmap"]["kind"], source["heatmap"]["block"])
        cae_in = _cae_input(maps, args["input_size"] if args["arch"] == "paper" else None, ckpt["prep"]["resize"],
                            ckpt["prep"]["norm"])
        error = ((cae(cae_in).double() - cae_in.double()) ** 2).mean()
        probs = classifier(x).softmax(1)
    return probs[0].double().numpy(), float(error), features[0].double().numpy()


def test_megadetector_boxes_are_scored_like_crops_cut_by_hand(megadetector_file, tiny_cae, tmp_path):
    cae_path = tiny_cae / "cae" / "best.pth"
    out = tmp_path / "out" / "detections.csv"
    summary = detect(megadetector_file, cae_path, out, CPU)
    rows = _rows(out)
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["image"], r["bbox"] != "", r["failure"][:12]) for r in rows] == [
        ("a.png", True, ""), ("a.png", True, ""), ("b.png", False, "empty: no an"),
        ("c.png", False, "megadetector"), ("sub/d.png", True, "")]
    assert (summary.scored, summary.empty, summary.failed) == (3, 1, 1)

    best = load_checkpoint(cae_path)
    names = best["heatmaps"]["classifier"]["class_names"]
    for row, (file, bbox) in zip([rows[0], rows[1], rows[4]], [("a.png", [0.1, 0.1, 0.5, 0.6]),
                                                               ("a.png", [0.5, 0.3, 0.4, 0.5]),
                                                               ("sub/d.png", [0.25, 0.0, 0.5, 1.0])]):
        decoded = load_rgb(megadetector_file.parent / file)  # PNG: the detector decodes these same pixels
        crop = decoded.crop(pixel_box(tuple(bbox), decoded.size))
        probs, score, _ = _reference_scores(cae_path, crop)
        assert json.loads(row["bbox"]) == bbox and float(row["detection_conf"]) in (0.91, 0.45, 0.3)
        assert row["predicted_class"] == names[int(np.argmax(probs))]
        assert float(row["confidence"]) == pytest.approx(probs.max(), rel=1e-5)
        assert float(row["ood_score"]) == pytest.approx(score, rel=1e-6)
        assert row["ood_flag"] == str(score > best["threshold"]) and float(row["threshold"]) == best["threshold"]
        below = (best["val_scores"].numpy() < float(row["ood_score"])).mean()  # of the stored val_id errors
        assert float(row["unknown_confidence"]) == below
        assert row["label"] == ("unknown" if row["ood_flag"] == "True" else row["predicted_class"])

    written = json.loads(out.with_suffix(".json").read_text())
    source = json.loads(megadetector_file.read_text())
    assert [i["file"] for i in written["images"]] == [i["file"] for i in source["images"]]
    assert written["info"]["format_version"] == "1.4" and written["info"]["detector"] == "md_v5a.0.0.pt"
    assert written["classification_categories"] == {**{str(i): n for i, n in enumerate(names)},
                                                     str(len(names)): "unknown"}
    a = written["images"][0]["detections"]
    for det, row in zip(a[:2], rows[:2]):
        assert det["ood_score"] == pytest.approx(float(row["ood_score"])) and det["ood_flag"] == (row["ood_flag"] == "True")
        species = det["classifications"]
        if det["ood_flag"]:  # the unknown category first, at its confidence, then the species as for the others
            assert species[0] == [str(len(names)), round(float(row["unknown_confidence"]), 4)]
            species = species[1:]
        probs = [p for _, p in species]
        assert probs == sorted(probs, reverse=True) and names[int(species[0][0])] == row["predicted_class"]
    assert a[2:] == source["images"][0]["detections"][2:]  # the low-confidence box and the person: as read
    assert written["images"][1:3] == source["images"][1:3]  # the empty image and MegaDetector's failure


def test_the_digits_defaults_cls_all_heatmaps_and_the_small_cae_score_like_by_hand(tiny_vit_checkpoint, tmp_path):
    """detect.py with a CAE of the digits defaults: multi-channel heatmaps (every block and head) into the
    small CAE at the native grid."""
    from stage_helpers import cae_config, stage2_config

    from wildcapture.stages import evaluate_classifier, train_cae

    evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, tmp_path / "s2", "heatmap.kind=cls_all",
                                          "gallery_size=0"))
    train_cae.run(cae_config(tmp_path / "s2" / "heatmaps", tmp_path / "s3", "cae.arch=small", "train.epochs=2"))
    cae_path = tmp_path / "s3" / "cae" / "best.pth"
    assert load_checkpoint(cae_path)["model_args"]["in_channels"] == 4  # tiny ViT: 2 blocks x 2 heads
    (tmp_path / "images").mkdir()
    for seed in range(3):
        _image(tmp_path / "images" / f"{seed}.png", seed)
    out = tmp_path / "out.csv"
    assert detect(tmp_path / "images", cae_path, out, CPU).scored == 3
    for row in _rows(out):
        probs, score, _ = _reference_scores(cae_path, load_rgb(tmp_path / "images" / row["image"]))
        assert float(row["confidence"]) == pytest.approx(probs.max(), rel=1e-5)
        assert float(row["ood_score"]) == pytest.approx(score, rel=1e-6)


def test_fusion_scores_equal_the_cae_and_mahalanobis_by_hand(megadetector_file, tiny_cae, tmp_path):
    cae_path = tiny_cae / "cae" / "best.pth"
    best = load_checkpoint(cae_path)
    # A well-conditioned Mahalanobis partner: the fitted class means, identity whitening (squared Euclidean
    # distance), round z-scores. The partner fitted on the tiny ViT weights a near-null direction by ~1e7
    # (LayerNorm features span an affine hyperplane), so float32 noise between batch sizes moves it by ~0.1%.
    means = best["fusion"]["partner_state"]["means"]
    partner = {"classes": best["fusion"]["partner_state"]["classes"], "means": means,
               "whiten": torch.eye(means.shape[1], dtype=torch.float64)}
    z = {"attention_mean": 0.3, "attention_std": 0.1, "feature_mean": 1.0, "feature_std": 2.0}
    boxes = [("a.png", [0.1, 0.1, 0.5, 0.6]), ("a.png", [0.5, 0.3, 0.4, 0.5]), ("sub/d.png", [0.25, 0.0, 0.5, 1.0])]
    fused = []
    for file, bbox in boxes:
        decoded = load_rgb(megadetector_file.parent / file)
        _, error, features = _reference_scores(cae_path, decoded.crop(pixel_box(tuple(bbox), decoded.size)))
        distance = min(((features - mean) ** 2).sum() for mean in means.numpy())
        fused.append((error - 0.3) / 0.1 + (distance - 1.0) / 2.0)
    threshold = float(np.mean(sorted(fused)[1:]))  # half-way between the two highest: one crop flagged
    calibration = torch.tensor([-1.0, 0.0, threshold, 1e9], dtype=torch.float64)  # the fused val_id scores, sorted
    torch.save({**best, "fusion": {"partner": "mahalanobis", "partner_state": partner, "zscore": z,
                                   "threshold": threshold, "val_scores": calibration}}, tmp_path / "fusion.pth")

    out = tmp_path / "fused" / "detections.csv"
    detect(megadetector_file, tmp_path / "fusion.pth", out, DetectOptions(batch_size=2, device="cpu", score="fusion"))
    rows = [r for r in _rows(out) if not r["failure"]]
    assert [(r["image"], json.loads(r["bbox"])) for r in rows] == boxes
    np.testing.assert_allclose([float(r["ood_score"]) for r in rows], fused, rtol=1e-5)
    assert sorted(r["ood_flag"] for r in rows) == ["False", "False", "True"]
    assert [r["ood_flag"] for r in rows] == [str(f > threshold) for f in fused]
    assert {float(r["threshold"]) for r in rows} == {threshold}
    assert [float(r["unknown_confidence"]) for r in rows] == [(calibration.numpy() < f).mean() for f in fused]
    info = json.loads(out.with_suffix(".json").read_text())["info"]["classifier_metadata"]
    assert info["ood_score"].startswith("cae+mahalanobis:") and info["ood_threshold"] == threshold
    # and stage 3's own fusion detector runs too, with the threshold it stored
    detect(megadetector_file, cae_path, tmp_path / "stored.csv", DetectOptions(batch_size=2, device="cpu",
                                                                                 score="fusion"))
    assert {r["threshold"] for r in _rows(tmp_path / "stored.csv") if not r["failure"]} == {
        repr(best["fusion"]["threshold"])}


def test_the_score_is_part_of_the_resume_key_and_fusion_needs_a_fusion_checkpoint(tiny_cae, tmp_path):
    cae_path, cpu = tiny_cae / "cae" / "best.pth", torch.device("cpu")
    # the same threshold for both: only the score differs
    nothing = Scan(items=[], images=0, malformed=0, digest="")
    prints = [engine.job_fingerprint(nothing, engine.load_models(cae_path, 2, cpu, 0.5, score), {}) for score in
              ("cae", "fusion")]
    first = ShardProgress(tmp_path, 0, prints[0], 1)
    first.resume()
    first.close()
    with pytest.raises(ConfigError, match="another job"):
        ShardProgress(tmp_path, 0, prints[1], 1).resume()

    torch.save({k: v for k, v in load_checkpoint(cae_path).items() if k != "fusion"}, tmp_path / "plain.pth")
    (tmp_path / "one").mkdir()
    _image(tmp_path / "one" / "0.png", 0)
    with pytest.raises(CheckpointError, match="holds no fusion detector.*--score cae"):
        detect(tmp_path / "one", tmp_path / "plain.pth", tmp_path / "out.csv",
               DetectOptions(batch_size=2, device="cpu", score="fusion"))
    with pytest.raises(ConfigError, match="--score must be one of cae, fusion"):
        detect(tmp_path / "one", cae_path, tmp_path / "out.csv", DetectOptions(device="cpu", score="knn"))
    assert not (tmp_path / "out.csv").exists()


def test_a_folder_with_bad_files_scores_the_rest_and_lists_each_failure(tmp_path, tiny_cae):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        _image(folder / f"good{i}.png", i)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(folder / "whole.jpg", quality=90)
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:300])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    shutil.copy(REPO_ROOT / "tests" / "fixtures" / "bad_exif.jpg", folder)  # its EXIF block makes PIL raise struct.error
    out = tmp_path / "detections.csv"
    summary = detect(folder, tiny_cae / "cae" / "best.pth", out, DetectOptions(batch_size=2, device="cpu", workers=2))
    rows = {r["image"]: r for r in _rows(out)}
    bad = ["bad_exif.jpg", "text.jpg", "truncated.jpg", "zero.jpg"]
    assert sorted(rows) == sorted(bad + ["good0.png", "good1.png", "good2.png", "whole.jpg"])
    for name in bad:
        assert str(folder / name) in rows[name]["failure"] and rows[name]["ood_score"] == ""
    assert rows["zero.jpg"]["failure"] == f"cannot read image {folder / 'zero.jpg'}: empty file (0 bytes). Replace " \
        "or delete this file."
    assert all(rows[g]["failure"] == "" and float(rows[g]["ood_score"]) > 0 for g in ("good0.png", "whole.jpg"))
    assert (summary.scored, summary.failed, summary.empty) == (4, 4, 0)
    written = json.loads(out.with_suffix(".json").read_text())
    assert [i["file"] for i in written["images"]] == sorted(rows)
    assert sorted(i["file"] for i in written["images"] if i.get("failure")) == bad


def test_bad_inputs_and_checkpoints_are_named(tiny_cae, tmp_path):
    cae_path = tiny_cae / "cae" / "best.pth"
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        with pytest.raises(DatasetError, match=str(tmp_path / folder)):
            detect(tmp_path / folder, cae_path, tmp_path / "out.csv", CPU)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json"):
        detect(tmp_path / "bad.json", cae_path, tmp_path / "out.csv", CPU)
    torch.save(load_cae(cae_path)[0].state_dict(), tmp_path / "bare.pt")
    (tmp_path / "one").mkdir()
    _image(tmp_path / "one" / "0.png", 0)
    with pytest.raises(CheckpointError, match="names no classifier"):
        detect(tmp_path / "one", tmp_path / "bare.pt", tmp_path / "out.csv", CPU)
    with pytest.raises(CheckpointError, match="stores no OOD threshold.*best.pth.*--threshold"):
        detect(tmp_path / "one", tiny_cae / "cae" / "last.pth", tmp_path / "out.csv", CPU)
    torch.save({k: v for k, v in load_checkpoint(cae_path).items() if k != "val_scores"}, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="stores no val_id scores to calibrate the unknown confidence"):
        detect(tmp_path / "one", tmp_path / "old.pth", tmp_path / "out.csv", CPU)
    (tmp_path / "md.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ConfigError, match="over the input"):  # X.csv's JSON twin would be the input
        detect(tmp_path / "md.json", cae_path, tmp_path / "md.csv", CPU)
    with pytest.raises(ConfigError, match="give a .csv path"):  # the JSON twin would replace the CSV
        detect(tmp_path / "md.json", cae_path, tmp_path / "out.json", CPU)
    assert not (tmp_path / "out.csv").exists() and json.loads((tmp_path / "md.json").read_text()) == {"images": []}


def _folder_of(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(n):
        _image(folder / f"{i:03d}.png", i, size=(24 + i % 5, 20))
    (folder / "009.png").write_bytes(b"broken")
    return folder


def test_an_interrupted_run_continues_to_the_same_outputs(tmp_path, tiny_cae, monkeypatch):
    folder, cae_path = _folder_of(tmp_path, 13), tiny_cae / "cae" / "best.pth"
    options = DetectOptions(batch_size=2, device="cpu", checkpoint_every=4)
    detect(folder, cae_path, tmp_path / "whole" / "d.csv", options)

    progress = interrupted_detect(folder, cae_path, tmp_path / "cut" / "d.csv", options, 5, monkeypatch)
    assert progress["items_done"] == 8  # checkpoints every 4 items: after batches 2 and 4
    detect(folder, cae_path, tmp_path / "cut" / "d.csv", options)

    assert (tmp_path / "cut" / "d.csv").read_bytes() == (tmp_path / "whole" / "d.csv").read_bytes()
    # the review images written before the kill are kept and the rest added: the same set as one run's
    assert sorted(p.name for p in (tmp_path / "cut" / "d_review").glob("*.jpg")) == \
        sorted(p.name for p in (tmp_path / "whole" / "d_review").glob("*.jpg"))
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["d.csv", "d.html", "d.json", "d_review"]
    with pytest.raises(Exception, match="another job"):  # a checkpoint of other settings is not continued
        interrupted_detect(folder, cae_path, tmp_path / "other" / "d.csv", options, 5, monkeypatch)
        detect(folder, cae_path, tmp_path / "other" / "d.csv", DetectOptions(batch_size=4, device="cpu"))
    detect(folder, cae_path, tmp_path / "other" / "d.csv", DetectOptions(batch_size=4, device="cpu", overwrite=True))


def _command(folder: Path, cae: Path, out: Path, *extra: str) -> list[str]:
    return [str(REPO_ROOT / "detect.py"), str(folder), "--cae", str(cae), "--out", str(out), "--device", "cpu",
            "--batch-size", "2", "--checkpoint-every", "2", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _without_time(path: Path) -> dict:
    document = json.loads(path.read_text())
    del document["info"]["classification_completion_time"]
    return document


@pytest.mark.e2e
def test_kill_9_then_the_same_command_and_two_processes_equal_one_run(tmp_path, tiny_cae):
    folder, cae = _folder_of(tmp_path, 40), tiny_cae / "cae" / "best.pth"
    one = subprocess.run([sys.executable, *_command(folder, cae, tmp_path / "one" / "d.csv")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "39 scored" in one.stdout and "1 failed" in one.stdout

    killed = tmp_path / "killed" / "d.csv"
    proc = subprocess.Popen([sys.executable, *_command(folder, cae, killed)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed.parent / ".d.csv.incomplete" / "progress.rank0.json"
    deadline = time.time() + 120
    while time.time() < deadline and (not progress.is_file() or json.loads(progress.read_text())["items_done"] < 10):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(progress.read_text())["items_done"] < 40 and not killed.exists()
    again = subprocess.run([sys.executable, *_command(folder, cae, killed)], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert killed.read_bytes() == (tmp_path / "one" / "d.csv").read_bytes()
    assert _without_time(killed.with_suffix(".json")) == _without_time(tmp_path / "one" / "d.json")

    two = tmp_path / "two" / "d.csv"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *_command(folder, cae, two)], env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert two.read_bytes() == (tmp_path / "one" / "d.csv").read_bytes()
    assert _without_time(two.with_suffix(".json")) == _without_time(tmp_path / "one" / "d.json")


def test_options_are_keyword_only_and_the_command_line_score_is_checked_by_the_options(tmp_path):
    with pytest.raises(TypeError):
        DetectOptions(2, "cpu")  # noqa: the point: positional settings are refused
    result = subprocess.run([sys.executable, str(REPO_ROOT / "detect.py"), str(tmp_path), "--score", "knn"],
                            env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: --score must be one of cae, fusion, got 'knn'\n"
    assert list(tmp_path.iterdir()) == []
