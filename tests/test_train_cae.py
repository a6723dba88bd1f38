"""Stage 3 (train the CAE) on the heatmaps of a tiny stage-2 run: checkpoints, log, resume, errors."""
import csv
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from wildcapture.cae.architectures import build_cae
from wildcapture.cae.engine import ood_threshold, reconstruction_errors
from wildcapture.cae.heatmap_data import HeatmapPrep, prepare_heatmaps
from wildcapture.cae.inputs import heatmap_source
from wildcapture.errors import DatasetError
from wildcapture.errors import IncompleteOutputError
from wildcapture.heatmaps.export import export_heatmap_pngs
from wildcapture.ood.baselines import Mahalanobis, ViM
from wildcapture.stages import train_cae
from wildcapture.stages.train_cae import run
from wildcapture.training_run import epoch_summary

from stage_helpers import cae_config

PREP = HeatmapPrep(16, "bilinear", "max")  # the tiny stage-3 config's


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _model(ckpt):
    model = build_cae(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


def test_best_checkpoint_threshold_and_log(tiny_cae, tiny_heatmaps, tiny_vit_checkpoint):
    folder = tiny_cae / "cae"
    best, last, log = _load(folder / "best.pth"), _load(folder / "last.pth"), _log(folder)

    assert best["model_args"] == {"arch": "paper", "input_size": 16, "zdim": 512, "in_channels": 1}
    assert best["prep"] == {"resize": "bilinear", "norm": "max"}
    assert best["accept_fraction"] == 0.95
    # the provenance of the heatmaps (stage 2's heatmaps_meta.yaml) travels with the CAE: stage 4 and
    # detect.py check it, and detect.py rebuilds the classifier from it
    meta = yaml.safe_load((tiny_heatmaps / "heatmaps" / "heatmaps_meta.yaml").read_text())
    for key in ("run_id", "classifier", "input_spec", "heatmap", "data"):
        assert best["heatmaps"][key] == meta[key], key
    assert best["heatmaps"]["heatmap_files"] == {f"{s}/heatmaps.npy": meta["files"][f"{s}/heatmaps.npy"]
                                                 for s in ("train_id", "val_id", "test_id", "ood_heldout")}
    assert best["heatmaps"]["classifier"]["sha256"] == hashlib.sha256(tiny_vit_checkpoint.read_bytes()).hexdigest()

    # one line per epoch; best = min of the logged val losses, running best logged each epoch
    assert [r["epoch"] for r in log] == [0, 1, 2]
    val_losses = [r["val_loss"] for r in log]
    assert best["val_loss"] == min(val_losses) and best["epoch"] == int(np.argmin(val_losses))
    assert [r["best_val_loss"] for r in log] == list(np.minimum.accumulate(val_losses))
    assert last["epoch"] == 2 and last["best_val_loss"] == min(val_losses) and "optimizer" in last

    # threshold recomputed independently from the raw val_id heatmaps and the best model
    raw = np.load(tiny_heatmaps / "heatmaps" / "val_id" / "heatmaps.npy")
    x = prepare_heatmaps(raw, 16, "bilinear", "max")
    model = _model(best)
    errors = reconstruction_errors(model, torch.from_numpy(raw), PREP, 5, "cpu")
    with torch.no_grad():
        direct = ((model(x).double() - x.double()) ** 2).mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(errors, direct, rtol=1e-6)
    assert best["val_loss"] == pytest.approx(errors.mean(), rel=1e-6)
    assert best["threshold"] == pytest.approx(ood_threshold(errors, 0.95), rel=1e-6)
    k = math.ceil(0.95 * len(errors))  # 38 of 40 accepted
    assert best["threshold"] == pytest.approx(np.sort(errors)[k - 1], rel=1e-6)
    assert (errors <= best["threshold"] * (1 + 1e-6)).sum() >= k

    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["cae"]["paper"]["input_size"] == 16 and saved["train"]["epochs"] == 3


def _stage2(tiny_heatmaps, split, name):
    return np.load(tiny_heatmaps / "heatmaps" / split / f"{name}.npy")


def test_best_checkpoint_holds_the_fusion_detector_fit_on_train_id_and_val_id(tiny_cae, tiny_heatmaps):
    best = _load(tiny_cae / "cae" / "best.pth")  # weights_only=True: the entry is plain values and tensors
    entry = best["fusion"]
    assert entry["partner"] == "mahalanobis"
    # the partner: class means of stage 2's train_id features, by hand; its test scores are stage 2's own
    with open(tiny_heatmaps / "heatmaps" / "train_id" / "index.csv", newline="") as handle:
        labels = np.array([int(row["label"]) for row in csv.DictReader(handle)])
    feats = _stage2(tiny_heatmaps, "train_id", "features").astype(np.float64)
    classes = sorted(set(labels.tolist()))
    assert entry["partner_state"]["classes"] == classes
    np.testing.assert_allclose(entry["partner_state"]["means"].numpy(),
                               [feats[labels == c].mean(0) for c in classes], rtol=1e-12)
    partner = Mahalanobis.from_state(entry["partner_state"])
    with open(tiny_heatmaps / "results" / "baseline_scores.csv", newline="") as handle:
        stage2_rows = list(csv.DictReader(handle))
    for split in ("test_id", "ood_heldout"):
        ours = partner.score(_stage2(tiny_heatmaps, split, "features"), _stage2(tiny_heatmaps, split, "logits"))
        assert ours.tolist() == [float(r["mahalanobis"]) for r in stage2_rows if r["split"] == split]

    # z-scores: mean and population std of the best model's val_id errors and of the partner's val_id scores
    errors = reconstruction_errors(_model(best), torch.from_numpy(_stage2(tiny_heatmaps, "val_id", "heatmaps")),
                                   PREP, 5, "cpu")
    val_scores = partner.score(_stage2(tiny_heatmaps, "val_id", "features"), _stage2(tiny_heatmaps, "val_id", "logits"))
    z = entry["zscore"]
    assert z["attention_mean"] == pytest.approx(errors.mean(), rel=1e-6)
    assert z["attention_std"] == pytest.approx(errors.std(), rel=1e-5)
    assert (z["feature_mean"], z["feature_std"]) == (val_scores.mean(), val_scores.std())
    fused = (errors - z["attention_mean"]) / z["attention_std"] + (val_scores - z["feature_mean"]) / z["feature_std"]
    assert entry["threshold"] == pytest.approx(ood_threshold(fused, 0.95), rel=1e-5)
    # `fused` is recomputed through another path than stage 3's, so a value may sit a few float32 ulps on the
    # other side of the threshold: count with a margin of float32's precision times the terms' magnitudes
    terms = (np.abs(errors).max() / z["attention_std"] + np.abs(val_scores).max() / z["feature_std"]
             + np.abs(fused).max())
    margin = 8 * np.finfo(np.float32).eps * terms
    k = math.ceil(0.95 * len(fused))
    assert (fused < entry["threshold"] - margin).sum() < k <= (fused <= entry["threshold"] + margin).sum()
    # the val_id scores best.pth stores (detect's calibration) are the very ones that set the thresholds
    stored, cae_stored = entry["val_scores"].numpy(), best["val_scores"].numpy()
    assert (stored <= entry["threshold"]).sum() == k and (cae_stored <= best["threshold"]).sum() == k
    np.testing.assert_allclose(stored, np.sort(fused), rtol=0, atol=margin)
    np.testing.assert_allclose(cae_stored, np.sort(errors), rtol=1e-5)
    assert list(stored) == sorted(stored) and list(cae_stored) == sorted(cae_stored)


def test_fusion_partner_null_stores_no_fusion_and_an_unknown_one_is_refused(tiny_heatmaps, tmp_path):
    from wildcapture.config import ConfigError

    run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=1", "fusion.partner=null"))
    assert "fusion" not in _load(tmp_path / "cae" / "best.pth")
    with pytest.raises(ConfigError, match="fusion.partner must be one of msp, maxlogit, energy, mahalanobis, rmds, "
                                          "knn, vim or null; got 'odin'"):
        run(cae_config(tiny_heatmaps / "heatmaps", tmp_path / "x", "fusion.partner=odin"))
    assert not (tmp_path / "x").exists()


def test_fusion_with_vim_fits_on_the_head_stage_2_stored(tiny_heatmaps, tmp_path):
    """ViM as the partner: fit on stage 2's stored head, its test scores are stage 2's own ViM column; a stage-2
    output without the head (written before stage 2 stored it) is refused, naming the file."""
    run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=1", "fusion.partner=vim"))
    entry = _load(tmp_path / "cae" / "best.pth")["fusion"]
    assert entry["partner"] == "vim" and entry["partner_state"]["dim"] == 8  # D // 2 of the 16-dim features
    partner = ViM.from_state(entry["partner_state"])
    with open(tiny_heatmaps / "results" / "baseline_scores.csv", newline="") as handle:
        stage2 = np.array([float(r["vim"]) for r in csv.DictReader(handle) if r["split"] == "test_id"])
    ours = partner.score(_stage2(tiny_heatmaps, "test_id", "features"), _stage2(tiny_heatmaps, "test_id", "logits"))
    np.testing.assert_allclose(ours, stage2, rtol=1e-12, atol=1e-12)

    old = tmp_path / "old_heatmaps"
    shutil.copytree(tiny_heatmaps / "heatmaps", old)
    meta = yaml.safe_load((old / "heatmaps_meta.yaml").read_text())
    for name in ("head_weight.npy", "head_bias.npy"):
        del meta["files"][name]
        (old / name).unlink()
    (old / "heatmaps_meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    with pytest.raises(IncompleteOutputError, match="head_weight.npy is not listed .*rerun stage 2"):
        run(cae_config(old, tmp_path / "y", "train.epochs=1", "fusion.partner=vim", "test.baseline_scores=null"))
    assert not (tmp_path / "y" / "cae" / "best.pth").exists()


def test_fusion_weight_is_stored_and_weighs_the_fused_val_scores(tiny_heatmaps, tmp_path):
    from wildcapture.config import ConfigError

    with pytest.raises(ConfigError, match="fusion.weight"):
        run(cae_config(tiny_heatmaps / "heatmaps", tmp_path / "x", "fusion.weight=1.5"))
    assert not (tmp_path / "x").exists()
    run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=1", "fusion.weight=0.25"))
    best = _load(tmp_path / "cae" / "best.pth")
    entry, z = best["fusion"], best["fusion"]["zscore"]
    assert z["attention_weight"] == 0.25
    errors = reconstruction_errors(_model(best), torch.from_numpy(_stage2(tiny_heatmaps, "val_id", "heatmaps")),
                                   PREP, 5, "cpu")
    partner = Mahalanobis.from_state(entry["partner_state"])
    val_scores = partner.score(_stage2(tiny_heatmaps, "val_id", "features"), _stage2(tiny_heatmaps, "val_id", "logits"))
    fused = 2 * (0.25 * (errors - z["attention_mean"]) / z["attention_std"]
                 + 0.75 * (val_scores - z["feature_mean"]) / z["feature_std"])
    np.testing.assert_allclose(entry["val_scores"].numpy(), np.sort(fused), rtol=1e-5, atol=1e-5)


def test_resume_after_interruption_gives_the_same_weights(tiny_cae, tiny_heatmaps, tmp_path, monkeypatch, capsys):
    original = train_cae.train_one_epoch

    def interrupted(*args, **kwargs):
        if kwargs.get("epoch") == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_cae, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=3"))
    folder = tmp_path / "cae"
    staged = folder / ".train_cae.incomplete"
    assert [r["epoch"] for r in _log(staged)] == [0, 1] and _load(staged / "last.pth")["epoch"] == 1
    assert not (folder / "last.pth").exists()  # nothing published before the run completes
    assert f"note: the unfinished run stays in {staged}: train.resume=true continues it" in capsys.readouterr().out
    monkeypatch.setattr(train_cae, "train_one_epoch", original)

    record = run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=3", "train.resume=true"))
    assert f"resuming at epoch 3/3 from {staged / 'last.pth'}\n" in capsys.readouterr().out  # epochs 1-2 done
    reference = tiny_cae / "cae"  # the same config run for 3 epochs without a break
    assert record["epoch"] == 2
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _log(folder)]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _log(reference)]
    for name in ("best.pth", "last.pth"):
        ours, theirs = _load(folder / name), _load(reference / name)
        assert ours["epoch"] == theirs["epoch"]
        assert ours["model"].keys() == theirs["model"].keys()
        for key in ours["model"]:
            assert torch.equal(ours["model"][key], theirs["model"][key]), f"{name}: {key} differs"
    assert _load(folder / "best.pth")["threshold"] == _load(reference / "best.pth")["threshold"]
    fusion, theirs = _load(folder / "best.pth")["fusion"], _load(reference / "best.pth")["fusion"]
    assert (fusion["zscore"], fusion["threshold"]) == (theirs["zscore"], theirs["threshold"])


def test_heatmaps_stay_on_disk_at_their_native_size(tiny_heatmaps, tmp_path, monkeypatch):
    # what stage 3 hands the loops on the CPU is stage 2's raw (N, h, w) float32 .npy, memory-mapped per read
    # (nothing of it resident, not N * S * S * 4 prepared bytes); each chunk is prepared by the config's HeatmapPrep
    seen = []

    def spy(real):
        def wrapper(model, heatmaps, prep, *args, **kwargs):
            seen.append((real.__name__, tuple(heatmaps.shape), heatmaps.dtype, type(heatmaps).__name__, prep))
            return real(model, heatmaps, prep, *args, **kwargs)
        return wrapper

    for name in ("train_one_epoch", "reconstruction_errors"):
        monkeypatch.setattr(train_cae, name, spy(getattr(train_cae, name)))
    run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=1"))
    n, h, w = np.load(tiny_heatmaps / "heatmaps" / "train_id" / "heatmaps.npy").shape
    assert (n, h, w) == (40, 4, 4)  # and the CAE input is 16 x 16: prepared, they would take 16x the bytes
    assert seen == [(name, (40, 4, 4), np.float32, "HeatmapFile", PREP)
                    for name in ("train_one_epoch", "reconstruction_errors")]


def test_early_stopping_stops_when_val_loss_stalls(tiny_heatmaps, tmp_path, capsys):
    # lr=1e-30: the Adam steps vanish in float32 rounding, so the val loss of epoch 0 is never beaten
    record = run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=20", "train.lr=1e-30",
                            "train.early_stopping=2"))
    log = _log(tmp_path / "cae")
    printed = capsys.readouterr().out.splitlines()  # the short line per epoch, the full record in log.jsonl
    assert [line for line in printed if line.startswith("epoch ")] == [
        epoch_summary(r["epoch"], 20, {"train_loss": r["train_loss"], "val_loss": r["val_loss"],
                                       "best": r["best_val_loss"]}, r["seconds"]) for r in log]
    assert [r["epoch"] for r in log] == [0, 1, 2] and record["epoch"] == 2
    assert len({r["val_loss"] for r in log}) == 1
    assert _load(tmp_path / "cae" / "best.pth")["epoch"] == 0
    assert _load(tmp_path / "cae" / "last.pth")["stale_epochs"] == 2


def test_heatmap_png_csv_inputs(tiny_heatmaps, tmp_path):
    csvs, raws = {}, {}
    for split in ("train_id", "val_id"):
        folder = tiny_heatmaps / "heatmaps" / split
        raws[split] = np.load(folder / "heatmaps.npy")
        with open(folder / "index.csv", newline="") as handle:
            labels = [row["label"] for row in csv.DictReader(handle)]
        csvs[split] = export_heatmap_pngs(raws[split], tmp_path / "png" / split,
                                          [f"{i:04d}" for i in range(len(labels))], labels)
    run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "train.epochs=1",
                   f"inputs.train_id={csvs['train_id']}", f"inputs.val_id={csvs['val_id']}"))

    best = _load(tmp_path / "cae" / "best.pth")
    png_cfg = cae_config(tiny_heatmaps / "heatmaps", tmp_path, f"inputs.val_id={csvs['val_id']}")
    raw_png = heatmap_source(png_cfg, ("val_id",)).heatmaps("val_id")
    x_png = prepare_heatmaps(raw_png, 16, "bilinear", "max")
    # the 8-bit PNGs are the npy heatmaps scaled by their max, to within rounding
    x_npy = prepare_heatmaps(raws["val_id"], 16, "bilinear", "max")
    assert x_png.shape == (40, 1, 16, 16)
    np.testing.assert_allclose(x_png.numpy(), x_npy.numpy(), atol=2 / 255)
    assert not torch.equal(x_png, x_npy)  # and they really were read from the PNGs
    errors = reconstruction_errors(_model(best), torch.from_numpy(raw_png), PREP, 40, "cpu")
    assert best["threshold"] == pytest.approx(ood_threshold(errors, 0.95), rel=1e-6)
    assert best["val_loss"] == pytest.approx(errors.mean(), rel=1e-6)
    assert "fusion" not in best  # no stage-2 features beside heatmap files: no fusion detector
    # the CAE records which files it learned, by digest, in place of a classifier
    assert best["heatmaps"] == {"external": {s: {"path": str(csvs[s]), "sha256": hashlib.sha256(
        csvs[s].read_bytes()).hexdigest()} for s in ("train_id", "val_id")}}

    with pytest.raises(DatasetError, match="inputs.train_id set but inputs.val_id not"):
        run(cae_config(tiny_heatmaps / "heatmaps", tmp_path / "x", f"inputs.train_id={csvs['train_id']}"))


def test_missing_heatmaps_name_the_folder_and_stage_2(tmp_path):
    with pytest.raises(IncompleteOutputError) as info:
        run(cae_config(tmp_path / "nowhere", tmp_path))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "heatmaps_meta.yaml" in message and "stage 2" in message
    assert not (tmp_path / "cae").exists()  # no folder is left by a run that failed before it trained


def test_corrupt_heatmaps_name_the_file(tiny_heatmaps, tmp_path):
    shutil.copytree(tiny_heatmaps / "heatmaps", tmp_path / "heatmaps")
    bad = tmp_path / "heatmaps" / "train_id" / "heatmaps.npy"
    bad.write_bytes(b"\x00garbage, not a numpy file" * 10)
    with pytest.raises(IncompleteOutputError, match="has changed since") as info:
        run(cae_config(tmp_path / "heatmaps", tmp_path / "out"))
    assert str(bad) in str(info.value)

    nan = np.load(tiny_heatmaps / "heatmaps" / "val_id" / "heatmaps.npy")
    nan[3, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DatasetError, match="NaN") as info:
        run(cae_config(tiny_heatmaps / "heatmaps", tmp_path / "out", f"inputs.val_id={tmp_path / 'nan.npy'}",
                       f"inputs.train_id={tiny_heatmaps / 'heatmaps' / 'train_id' / 'heatmaps.npy'}"))
    assert str(tmp_path / "nan.npy") in str(info.value)
    assert not (tmp_path / "out").exists()


def test_incomplete_stage_2_output_is_refused(tiny_heatmaps, tmp_path):
    heatmaps = tmp_path / "heatmaps"
    shutil.copytree(tiny_heatmaps / "heatmaps", heatmaps)
    marker = heatmaps / "heatmaps_meta.yaml"
    full = marker.read_text()
    for damaged in ("", full[: len(full) // 2], "format: wildcapture-marker-1\n"):  # 0-byte, cut, keys missing
        marker.write_text(damaged)
        with pytest.raises(IncompleteOutputError, match="heatmaps_meta.yaml.*rerun stage 2"):
            run(cae_config(heatmaps, tmp_path / "out", "train.epochs=1"))
    marker.unlink()  # what a stage-2 run that died midway leaves
    with pytest.raises(IncompleteOutputError, match="no complete output.*rerun stage 2"):
        run(cae_config(heatmaps, tmp_path / "out", "train.epochs=1"))
    assert not (tmp_path / "out" / "cae" / "best.pth").exists()


def test_unknown_normalisation_is_a_config_error(tiny_heatmaps, tmp_path):
    from wildcapture.config import ConfigError

    with pytest.raises(ConfigError, match="cae.norm must be one of max, minmax, none; got 'maximum'"):
        run(cae_config(tiny_heatmaps / "heatmaps", tmp_path, "cae.norm=maximum"))
