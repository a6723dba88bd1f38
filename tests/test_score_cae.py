"""Stage 4 (score test images by CAE reconstruction error) on a tiny stage-3 run: files agree with
an independent computation, the OOD table with the baselines of stage 2, and bad inputs are named."""
import csv
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from wildcapture.cae.architectures import build_cae
from wildcapture.cae.architectures import ConvAutoencoder
from wildcapture.errors import DatasetError
from wildcapture.ood.metrics import auroc, ood_metrics
from wildcapture.ood.table import read_table
from wildcapture.paths import REPO_ROOT
from wildcapture.cae.checkpoint import load_cae
from wildcapture.errors import IncompleteOutputError
from wildcapture.stages import score_cae, train_cae
from wildcapture.stages.score_cae import read_recon_errors, run
from wildcapture.storage import sha256_file
from wildcapture.vit import WeightsMismatchError

from stage_helpers import cae_config

SPLITS = ("test_id", "ood_heldout")
BASELINES = ("msp", "maxlogit", "energy", "mahalanobis", "rmds", "knn", "vim")


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _config(tiny_heatmaps, tiny_cae, results, *overrides):
    """Stage-4 config reading the shared stage-2/3 outputs and writing only to `results`."""
    return cae_config(tiny_heatmaps / "heatmaps", tiny_cae, f"results_dir={results}",
                      f"test.baseline_scores={tiny_heatmaps / 'results' / 'baseline_scores.csv'}", *overrides)


def _files(folder):
    """The files of `folder` (recursively) except the run lock."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture(scope="module")
def stage4(tiny_heatmaps, tiny_cae, tmp_path_factory):
    """Results folder of one stage-4 run (test.batch_size=7) reading stage 2's baseline scores."""
    results = tmp_path_factory.mktemp("stage4") / "results"
    run(_config(tiny_heatmaps, tiny_cae, results, "test.batch_size=7"))
    return results


def test_recon_errors_pickle_holds_one_entry_per_test_image(stage4, tiny_heatmaps, tiny_cae):
    with open(stage4 / "recon_errors.pkl", "rb") as handle:
        result = pickle.load(handle)
    index = {s: _rows(tiny_heatmaps / "heatmaps" / s / "index.csv") for s in SPLITS}
    n = {s: len(index[s]) for s in SPLITS}
    assert n == {"test_id": 40, "ood_heldout": 40}
    keys = ("ids", "rows", "split", "ood_set", "labels", "class_names", "is_ood", "errors", "flagged_ood",
            "fusion_scores", "fusion_flagged_ood")
    assert {len(result[k]) for k in keys} == {80}
    assert result["ids"] == [r["source"] for s in SPLITS for r in index[s]]
    assert result["rows"] == [*range(40), *range(40)]
    assert result["split"] == ["test_id"] * 40 + ["ood_heldout"] * 40
    assert result["ood_set"] == [""] * 40 + ["heldout"] * 40
    assert result["labels"] == [int(r["label"]) for s in SPLITS for r in index[s]]
    assert min(result["labels"][:40]) >= 0 and set(result["labels"][40:]) == {-1}
    assert result["class_names"] == [r["class_name"] for s in SPLITS for r in index[s]]
    assert list(result["is_ood"]) == [0] * 40 + [1] * 40
    best = _load(tiny_cae / "cae" / "best.pth")
    assert result["threshold"] == best["threshold"]
    assert result["checkpoint"] == str(tiny_cae / "cae" / "best.pth")
    assert list(result["flagged_ood"]) == list(result["errors"] > best["threshold"])
    assert result["errors"].dtype == np.float64 and np.all(result["errors"] > 0)

    # errors = mean over pixels of (model(x) - x)^2, x prepared here from the raw heatmaps, one image at a time
    model = build_cae(**best["model_args"]).eval()
    model.load_state_dict(best["model"])
    expected = []
    for s in SPLITS:
        raw = torch.from_numpy(np.load(tiny_heatmaps / "heatmaps" / s / "heatmaps.npy"))
        x = F.interpolate(raw[:, None], size=(16, 16), mode="bilinear", align_corners=False)
        x = x / x.amax(dim=(2, 3), keepdim=True)
        with torch.no_grad():
            expected += [((model(x[i:i + 1]) - x[i:i + 1]) ** 2).mean().item() for i in range(len(x))]
    np.testing.assert_allclose(result["errors"], expected, rtol=1e-5)

    # the CSV twin has the same rows, errors to full precision
    twin = _rows(stage4 / "recon_errors.csv")
    assert [r["ids"] for r in twin] == result["ids"] and [r["split"] for r in twin] == result["split"]
    assert [r["ood_set"] for r in twin] == result["ood_set"]
    assert [int(r["rows"]) for r in twin] == result["rows"]
    assert [float(r["errors"]) for r in twin] == list(result["errors"])
    assert [r["flagged_ood"] == "True" for r in twin] == list(result["flagged_ood"])
    assert [float(r["fusion_scores"]) for r in twin] == list(result["fusion_scores"])
    assert [r["fusion_flagged_ood"] == "True" for r in twin] == list(result["fusion_flagged_ood"])


def test_read_recon_errors_returns_the_pickle_and_refuses_a_changed_one(stage4, tmp_path):
    with open(stage4 / "recon_errors.pkl", "rb") as handle:
        written = pickle.load(handle)
    read = read_recon_errors(stage4 / "recon_errors.pkl")
    assert read.keys() == written.keys() and read["ids"] == written["ids"]
    np.testing.assert_array_equal(read["errors"], written["errors"])
    copy = tmp_path / "results"
    shutil.copytree(stage4, copy)
    written["errors"] = written["errors"] * 2
    with open(copy / "recon_errors.pkl", "wb") as handle:
        pickle.dump(written, handle)
    with pytest.raises(IncompleteOutputError, match="has changed since the run that wrote it completed"):
        read_recon_errors(copy / "recon_errors.pkl")
    (copy / "score_cae.complete.yaml").unlink()
    with pytest.raises(IncompleteOutputError, match="holds no complete output"):
        read_recon_errors(copy / "recon_errors.pkl")


def test_ood_table_has_cae_and_the_stage_2_baselines(stage4, tiny_heatmaps):
    with open(stage4 / "recon_errors.pkl", "rb") as handle:
        result = pickle.load(handle)
    table = json.loads((stage4 / "ood_table.json").read_text())
    rows = {r["detector"]: r for r in table["rows"]}
    assert [r["detector"] for r in table["rows"]] == ["cae", "cae+mahalanobis", *BASELINES]
    # the default protocol: one set (the held-out digits), so one row per detector and no mean row
    assert {(r["ood_set"], r["group"]) for r in table["rows"]} == {("heldout", "near")}
    is_ood = np.asarray(result["is_ood"]) == 1
    errors = np.asarray(result["errors"])
    assert rows["cae"]["auroc"] == pytest.approx(auroc(errors[~is_ood], errors[is_ood]), abs=1e-12)
    assert rows["cae"]["n_id"] == 40 and rows["cae"]["n_ood"] == 40

    scores = _rows(tiny_heatmaps / "results" / "baseline_scores.csv")
    for name in BASELINES:
        per_split = [np.array([float(r[name]) for r in scores if r["split"] == s]) for s in SPLITS]
        for metric, value in ood_metrics(*per_split).items():
            assert rows[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)
    # and the baseline rows line up with stage 2's logits: MSP recomputed from logits.npy
    msp = [-torch.softmax(torch.from_numpy(np.load(tiny_heatmaps / "heatmaps" / s / "logits.npy")).double(), 1)
           .max(1).values.numpy() for s in SPLITS]
    assert rows["msp"]["auroc"] == pytest.approx(auroc(*msp), abs=1e-9)
    assert "test_id (40 ID images)" in table["caption"]

    for name in ("roc_curves.png", "score_histograms.png", "reconstruction_gallery.png"):
        assert (stage4 / name).stat().st_size > 0
        with Image.open(stage4 / name) as image:
            assert image.format == "PNG" and min(image.size) > 100


def _pickle(folder):
    with open(folder / "recon_errors.pkl", "rb") as handle:
        return pickle.load(handle)


def test_fusion_row_is_the_cae_errors_plus_stage_2_mahalanobis_by_the_stored_z_scores(stage4, tiny_heatmaps,
                                                                                      tiny_cae):
    result, fusion = _pickle(stage4), _load(tiny_cae / "cae" / "best.pth")["fusion"]
    z = fusion["zscore"]
    scores = _rows(tiny_heatmaps / "results" / "baseline_scores.csv")
    mahalanobis = np.array([float(r["mahalanobis"]) for s in SPLITS for r in scores if r["split"] == s])
    by_hand = ((np.asarray(result["errors"]) - z["attention_mean"]) / z["attention_std"]
               + (mahalanobis - z["feature_mean"]) / z["feature_std"])
    np.testing.assert_allclose(result["fusion_scores"], by_hand, rtol=1e-12, atol=1e-12)
    assert result["fusion"] == "cae+mahalanobis" and result["fusion_threshold"] == fusion["threshold"]
    assert list(result["fusion_flagged_ood"]) == list(by_hand > fusion["threshold"])
    assert 0 < np.sum(result["fusion_flagged_ood"]) < 80

    table = json.loads((stage4 / "ood_table.json").read_text())
    row = next(r for r in table["rows"] if r["detector"] == "cae+mahalanobis")
    is_ood = np.asarray(result["is_ood"]) == 1
    for metric, value in ood_metrics(by_hand[~is_ood], by_hand[is_ood]).items():
        assert row[metric] == pytest.approx(value, abs=1e-12), metric
    assert "cae+mahalanobis = the CAE error plus the mahalanobis score, each z-scored on val_id" in table["caption"]


def _change_rows(heatmaps_dir, split, name, rows):
    """Change `rows` of one of stage 2's arrays and record the file's digest in its meta, as stage 2 would."""
    path = heatmaps_dir / split / f"{name}.npy"
    array = np.load(path)
    array[rows] = array[rows] * 1.5 + 0.1
    np.save(path, array)
    meta_path = heatmaps_dir / "heatmaps_meta.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["files"][f"{split}/{name}.npy"] = sha256_file(path)
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))


def test_the_fusion_detector_is_fit_on_val_id_only(stage4, tiny_heatmaps, tiny_cae, tmp_path):
    # the stage-2 output of tiny_cae with other test data: test_id features of rows 0 and 3, test_ood heatmap 1
    heatmaps = tmp_path / "heatmaps"
    shutil.copytree(tiny_heatmaps / "heatmaps", heatmaps)
    _change_rows(heatmaps, "test_id", "features", [0, 3])
    _change_rows(heatmaps, "ood_heldout", "heatmaps", [1])
    # tiny_cae's stage-3 config, and stage4's batch size (CAE errors may differ in the last bits between sizes)
    cfg = cae_config(heatmaps, tmp_path, "train.epochs=3", "test.baselines=false", "test.batch_size=7")
    train_cae.run(cfg)
    ours, theirs = _load(tmp_path / "cae" / "best.pth")["fusion"], _load(tiny_cae / "cae" / "best.pth")["fusion"]
    assert (ours["partner"], ours["zscore"], ours["threshold"]) == (theirs["partner"], theirs["zscore"],
                                                                   theirs["threshold"])
    assert ours["partner_state"]["classes"] == theirs["partner_state"]["classes"]
    assert all(torch.equal(ours["partner_state"][k], theirs["partner_state"][k]) for k in ("means", "whiten"))

    run(cfg)
    changed, original = _pickle(tmp_path / "results")["fusion_scores"], _pickle(stage4)["fusion_scores"]
    assert np.flatnonzero(changed != original).tolist() == [0, 3, 40 + 1]  # only the changed images moved


def test_errors_do_not_depend_on_the_batch_size(stage4, tiny_heatmaps, tiny_cae, tmp_path):
    run(_config(tiny_heatmaps, tiny_cae, tmp_path, "test.batch_size=1", "test.baselines=false"))
    with open(tmp_path / "recon_errors.pkl", "rb") as one, open(stage4 / "recon_errors.pkl", "rb") as seven:
        np.testing.assert_allclose(pickle.load(one)["errors"], pickle.load(seven)["errors"], rtol=1e-6)
    # the fusion detector is the checkpoint's, not one of stage 2's baselines: it stays
    assert [r["detector"] for r in json.loads((tmp_path / "ood_table.json").read_text())["rows"]] == [
        "cae", "cae+mahalanobis"]


def test_empty_ood_split_is_named(tiny_heatmaps, tiny_cae, tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), dtype=np.float32))
    with pytest.raises(DatasetError, match="ood_heldout"):
        run(_config(tiny_heatmaps, tiny_cae, tmp_path / "results", f"inputs.test_ood={tmp_path / 'empty.npy'}",
                    f"inputs.test_id={tiny_heatmaps / 'heatmaps' / 'test_id' / 'heatmaps.npy'}"))
    assert _files(tmp_path / "results") == []


def test_cae_checkpoint_of_another_input_size_is_named(tiny_heatmaps, tiny_cae, tmp_path):
    with pytest.raises(WeightsMismatchError, match=r"cae\.paper\.input_size=16"):
        run(_config(tiny_heatmaps, tiny_cae, tmp_path / "results", "cae.paper.input_size=32"))
    assert _files(tmp_path / "results") == []


def test_bare_state_dict_in_the_papers_format_is_sized_from_its_bottleneck(tiny_heatmaps, tiny_cae, tmp_path):
    # the paper's AutoEncoderW.pt: a bare state dict, 128x128 input (bottleneck kernel 8x8)
    paper = json.loads((REPO_ROOT / "tests" / "fixtures" / "paper_cae_state_dict.json").read_text())["state_dict"]
    generator = torch.Generator().manual_seed(0)
    torch.save({k: torch.randn(shape, generator=generator) * 0.01 for k, shape in paper.items()},
               tmp_path / "AutoEncoderW.pt")
    assert "encoder.0.weight" in paper
    with pytest.raises(WeightsMismatchError, match=r"cae\.paper\.input_size=128"):
        run(_config(tiny_heatmaps, tiny_cae, tmp_path / "results", f"test.checkpoint={tmp_path / 'AutoEncoderW.pt'}"))

    # one of the config's size loads strictly, and has no threshold
    state = ConvAutoencoder(16, 512).state_dict()
    torch.save(state, tmp_path / "bare16.pt")
    model, ckpt = load_cae(tmp_path / "bare16.pt", _config(tiny_heatmaps, tiny_cae, tmp_path)["cae"])
    assert model.constructor_args() == {"input_size": 16, "zdim": 512, "in_channels": 1}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert "threshold" not in ckpt and ckpt["path"] == str(tmp_path / "bare16.pt")


def test_heatmap_csv_inputs_give_ood_labels_and_no_foreign_baselines(tiny_heatmaps, tiny_cae, tmp_path):
    from wildcapture.heatmaps.export import export_heatmap_pngs

    inputs = []
    for key, split in zip(("test_id", "test_ood"), SPLITS):  # inputs.test_ood: the held-out set's files
        raw = np.load(tiny_heatmaps / "heatmaps" / split / "heatmaps.npy")
        labels = [r["label"] for r in _rows(tiny_heatmaps / "heatmaps" / split / "index.csv")]
        csv_path = export_heatmap_pngs(raw, tmp_path / "png" / split, [f"{i:03d}" for i in range(len(raw))], labels)
        inputs.append(f"inputs.{key}={csv_path}")
    results = tmp_path / "results"
    out = run(_config(tiny_heatmaps, tiny_cae, results, *inputs))  # stage 2's baseline scores are for other images

    assert [row["detector"] for row in out["rows"]] == ["cae"]
    with open(results / "recon_errors.pkl", "rb") as handle:
        saved = pickle.load(handle)
    ood = [s == "ood_heldout" for s in saved["split"]]
    assert all(label == -1 for label, o in zip(saved["labels"], ood) if o)
    assert all(isinstance(label, int) and label >= 0 for label, o in zip(saved["labels"], ood) if not o)
    assert saved["ids"][0] == str((tmp_path / "png" / "test_id" / "000.png").resolve())
    # nor a fusion score: the checkpoint's fusion detector needs stage 2's features of these images
    assert saved["fusion"] is None and np.isnan(saved["fusion_threshold"]) and np.isnan(saved["fusion_scores"]).all()
    assert not saved["fusion_flagged_ood"].any()
    assert (results / "reconstruction_gallery.png").stat().st_size > 0


@pytest.mark.parametrize("change", [{"limit_per_split": 1}, {"seed": 1}], ids=["fewer-rows", "other-images"])
def test_a_data_config_that_rebuilds_to_other_images_leaves_the_gallery_heatmaps_only(
        stage4, tiny_heatmaps, tiny_cae, tmp_path, monkeypatch, capsys, change):
    # stage 2's data config, rebuilt today, gives splits of 1 row each (stage 2 wrote 40: the gallery's rows index
    # past them), or as many rows of other images (a gallery of the wrong pictures): the gallery shows the heatmaps
    real, asked = score_cae.build_splits, []

    def rebuilt(data, **kw):
        asked.append(kw)
        return real({**data, **change}, **kw)

    monkeypatch.setattr(score_cae, "build_splits", rebuilt)
    capsys.readouterr()
    run(_config(tiny_heatmaps, tiny_cae, tmp_path / "results", "test.batch_size=7"))
    assert asked == [{"download": False}]  # a gallery never downloads
    assert ("note: the gallery shows heatmaps only: split test_id of stage 2's data config no longer holds the 40 "
            "images stage 2 wrote") in capsys.readouterr().out
    assert (tmp_path / "results" / "reconstruction_gallery.png").stat().st_size > 0
    assert read_table(tmp_path / "results" / "ood_table.csv") == read_table(stage4 / "ood_table.csv")
