"""The seed study (`benchmarks/seeds.py`): its per-run configs and folders, and one tiny run producing the summary."""
import json
import runpy

import numpy as np
import pytest
import yaml

import wildcapture.study.variants as variants
from wildcapture.config import ConfigError
from wildcapture.ood.seeds_summary import COLUMNS
from wildcapture.paths import REPO_ROOT
from wildcapture.pipeline import check_stage_configs
from wildcapture.study.seed_runs import StudyLayout, default_root, run_configs
from wildcapture.study.fusion_weight import WEIGHTS
from wildcapture.study.variants import Variant, pick_variants

# the study's variants in these tests (VARIANTS itself is the lead's list to edit)
CLS_LAST, ROLLOUT = Variant("cls_last", ("heatmap.kind=cls_last",)), Variant("rollout", ("heatmap.kind=rollout",))
TINY = ["device=cpu", "data.limit_per_split=40", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=16",
        "model.img_size=8", "model.patch_size=2", "model.embed_dim=16", "model.depth=2", "model.num_heads=2",
        "batch_size=16", "gallery_size=0", "baselines.knn_k=5", "cae.paper.input_size=16", "test.batch_size=16",
        "test.gallery_size=0"]
# the e2e study's OOD sets: a val set (here the same held-out digits) gives each run its fusion chosen on val
SETS = ("data.ood_sets=[{name: heldout, group: near, source: classes}, "
        "{name: val_held, group: val, source: classes}]")


def test_run_configs_place_each_run_in_its_folders(tmp_path):
    layout = StudyLayout(tmp_path)
    rollout = ROLLOUT
    vit_cfg, test_cfg, cae_cfg, score_cfg = run_configs("digits", ["data.id_classes=[1,2]", "device=cpu"], layout, 3,
                                                        rollout)
    seed_dir = tmp_path / "runs" / "seed3"
    assert [c["seed"] for c in (vit_cfg, test_cfg, cae_cfg, score_cfg)] == [3, 3, 3, 3]
    assert vit_cfg["output_dir"] == str(seed_dir / "vit") and vit_cfg["data"]["id_classes"] == [1, 2]
    assert test_cfg["checkpoint"] == str(seed_dir / "vit" / "best.pth") and test_cfg["overwrite"] is True
    # stage 2 tests on the data config its classifier's checkpoint carries (data_from_checkpoint): data.* is stage 1's
    assert test_cfg["heatmap"]["kind"] == "rollout" and test_cfg["data_from_checkpoint"] is True
    assert test_cfg["data"]["id_classes"] is None
    assert test_cfg["heatmaps_dir"] == cae_cfg["heatmaps_dir"] == str(seed_dir / "heatmaps" / "rollout")
    assert test_cfg["results_dir"] == str(seed_dir / "stage2" / "rollout")
    assert cae_cfg == score_cfg and cae_cfg["output_dir"] == str(seed_dir / "cae" / "rollout")
    assert cae_cfg["results_dir"] == str(seed_dir / "ood" / "rollout")
    assert cae_cfg["test"]["baseline_scores"] == str(seed_dir / "stage2" / "rollout" / "baseline_scores.csv")
    assert {c["device"] for c in (vit_cfg, test_cfg, cae_cfg)} == {"cpu"}

    for item in ("seed=4", "output_dir=x", "heatmap.kind=cls_last", "test.baseline_scores=x.csv"):
        with pytest.raises(ConfigError, match=f"sets {item.split('=')[0]} for each run"):
            run_configs("digits", [item], layout, 0, rollout)
    with pytest.raises(ConfigError, match="sets seed for each run"):
        run_configs("digits", ["1:seed=4"], layout, 0, rollout)
    with pytest.raises(ConfigError, match="trian.epochs"):
        run_configs("digits", ["trian.epochs=2"], layout, 0, rollout)
    short = run_configs("digits", ["1:train.epochs=2"], layout, 0, rollout)  # the classifier's epochs, not the CAE's
    assert short[0]["train"]["epochs"] == 2 and short[2]["train"]["epochs"] == cae_cfg["train"]["epochs"] != 2
    assert default_root("digits", []) == REPO_ROOT / "results" / "digits" / "seeds"
    assert default_root("digits", ["exp=split2"]) == REPO_ROOT / "results" / "split2" / "seeds"


def test_variants_are_picked_by_name(monkeypatch):
    paper = Variant("cls_last/paper", ("heatmap.kind=cls_last",), ("cae.paper.zdim=64",))
    clash = Variant("other", ("heatmap.block=cls_last",))  # another setting, the same folder name
    monkeypatch.setattr(variants, "VARIANTS", (CLS_LAST, ROLLOUT, paper, clash))
    assert pick_variants(["rollout", "cls_last"]) == [ROLLOUT, CLS_LAST]
    with pytest.raises(ConfigError, match="unknown variant 'cls_lst'; choose from cls_last, rollout, cls_last/paper"):
        pick_variants(["cls_lst"])
    with pytest.raises(ConfigError, match="distinct"):
        pick_variants(["rollout", "rollout"])
    assert paper.folder == "cls_last-paper" and paper.heatmap_folder == "cls_last"
    assert [v.heatmap_folder for v in pick_variants(["cls_last", "cls_last/paper"])] == ["cls_last", "cls_last"]
    with pytest.raises(ConfigError, match="would share the stage-2 folder 'cls_last'"):
        pick_variants(["cls_last", "other"])


def test_every_listed_variant_gives_valid_stage_configs(tmp_path):
    assert set(variants.DEFAULT_VARIANTS) <= {v.name for v in variants.VARIANTS}
    for v in pick_variants([v.name for v in variants.VARIANTS]):
        # ConfigError for a key no stage has, or a value a stage cannot use (an unknown heatmap kind)
        check_stage_configs(run_configs("digits", [], StudyLayout(tmp_path), 0, v))


@pytest.mark.e2e
def test_seeds_script_on_a_tiny_run_writes_the_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(variants, "VARIANTS", (CLS_LAST, ROLLOUT))
    script = runpy.run_path(str(REPO_ROOT / "benchmarks" / "seeds.py"))
    script["main"](["--seeds", "2", "--variants", "cls_last", "rollout", "--bootstrap", "200",
                    "--out", str(tmp_path), *TINY, SETS])
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    markdown = (tmp_path / "summary.md").read_text()
    assert "| OOD set | Group | Detector | Family | AUROC mean |" in printed and markdown.strip() in printed
    assert "seed 1, stage 4 scores rollout:" in printed

    rows = {r["detector"]: r for r in summary["rows"] if r["ood_set"] == "heldout"}
    assert summary["columns"] == list(COLUMNS) and all(list(r) == list(COLUMNS) for r in summary["rows"])
    partners = ("msp", "maxlogit", "energy", "mahalanobis", "rmds", "knn", "vim")  # every one is storable
    fused = {f"cae+{p}[{v}]" for p in (*partners, "val-chosen") for v in ("cls_last", "rollout")}
    assert set(rows) == {"cae[cls_last]", "cae[rollout]", *fused, *partners}
    assert {d: r["family"] for d, r in rows.items() if r["family"] != "feature"} == {
        "cae[cls_last]": "attention", "cae[rollout]": "attention", **{d: "fusion" for d in fused}}
    assert all(r["delta_auroc_ci_low"] is not None for r in rows.values())  # fusion rows are paired too
    held = [r["auroc_mean"] for r in summary["rows"] if r["ood_set"] == "heldout"]
    assert held == sorted((r["auroc_mean"] for r in rows.values()), reverse=True) and {
        r["n_seeds"] for r in rows.values()} == {2}
    assert (study := summary["study"])["seeds"] == [0, 1]
    assert study["ood_sets"]["heldout"] == {"group": "near", "reference": study["ood_sets"]["heldout"]["reference"],
                                            "n_id": 40, "n_ood": 40}
    _val_set_rows_and_choices(summary, partners)
    assert [v["name"] for v in study["variants"]] == ["cls_last", "rollout"]
    # stage 1 once per seed, stage 2 once per heatmap kind, stages 3-4 once per variant
    assert [t["step"] for t in study["timings"] if t["seed"] == 0] == [
        "stage 1 classifier", "stage 2 heatmaps cls_last", "stage 3 CAE cls_last", "stage 4 scores cls_last",
        "stage 2 heatmaps rollout", "stage 3 CAE rollout", "stage 4 scores rollout"]

    # the means and spreads are those of the per-run OOD tables (features: the first variant's tables)
    runs = tmp_path / "runs"
    assert not list(runs.rglob("*gallery.png"))  # a study draws no galleries
    assert (runs / "seed0" / "ood" / "cls_last" / "roc_curves.png").is_file()
    for seed in (0, 1):
        assert yaml.safe_load((runs / f"seed{seed}" / "vit" / "config.yaml").read_text())["seed"] == seed
        assert yaml.safe_load((runs / f"seed{seed}" / "cae" / "rollout" / "config.yaml").read_text())["seed"] == seed
    tables = {(s, v): {r["detector"]: r for r in json.loads((runs / f"seed{s}" / "ood" / v / "ood_table.json")
                                                             .read_text())["rows"] if r["ood_set"] == "heldout"}
              for s in (0, 1) for v in ("cls_last", "rollout")}
    for name, row in rows.items():
        detector, _, variant = name.rstrip("]").partition("[")
        variant = variant or "cls_last"
        if detector not in tables[0, variant]:  # a partner stage 4 did not fuse: test_partner_fusion checks it
            continue
        for metric in ("auroc", "fpr95"):
            values = [tables[s, variant][detector][metric] for s in (0, 1)]
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(values), abs=1e-12), (name, metric)
            assert row[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12), (name, metric)
    assert tables[0, "cls_last"]["cae"]["auroc"] != tables[1, "cls_last"]["cae"]["auroc"]  # the seeds differ
    reference = study["ood_sets"]["heldout"]["reference"]
    assert rows[reference]["auroc_mean"] == max(r["auroc_mean"] for r in rows.values() if r["family"] == "feature")
    assert (rows[reference]["delta_auroc"], rows[reference]["delta_auroc_ci_low"]) == (0.0, 0.0)
    for row in rows.values():
        assert row["delta_auroc_ci_low"] <= row["delta_auroc_ci_high"]
        assert row["delta_auroc"] == pytest.approx(row["auroc_mean"] - rows[reference]["auroc_mean"], abs=1e-12)
    _summary_only_rebuilds_it(script, tmp_path, capsys)
    _only_reruns_its_seeds(script, tmp_path, capsys)


def _only_reruns_its_seeds(script, study, capsys):
    """--only 1 (reusing the study's own classifiers) redoes seed 1's stages 2-4 alone and writes no summary; the
    --summary-only after it gives the same rows, with seed 1's new timings."""
    runs, written = study / "runs", (study / "summary.json").read_text()
    untouched = [runs / "seed0" / "cae" / "rollout" / "best.pth", runs / "seed1" / "vit" / "best.pth"]
    before = [p.stat().st_mtime_ns for p in untouched]
    redone = runs / "seed1" / "cae" / "rollout" / "best.pth"
    redone_before = redone.stat().st_mtime_ns
    args = ["--seeds", "2", "--variants", "cls_last", "rollout", "--bootstrap", "200", "--out", str(study), *TINY, SETS]
    script["main"]([*args, "--only", "1", "--classifiers", str(study)])
    assert "--summary-only writes the summary" in capsys.readouterr().out
    assert (study / "summary.json").read_text() == written
    assert [p.stat().st_mtime_ns for p in untouched] == before and redone.stat().st_mtime_ns != redone_before
    seed1 = json.loads((runs / "seed1" / "timings.json").read_text())
    assert [t["step"] for t in seed1][0] == "stage 2 heatmaps cls_last" and {t["seed"] for t in seed1} == {1}

    script["main"]([*args, "--summary-only"])
    summary, old = json.loads((study / "summary.json").read_text()), json.loads(written)
    assert summary["rows"] == old["rows"]
    assert summary["study"]["timings"] == [t for t in old["study"]["timings"] if t["seed"] == 0] + seed1
    with pytest.raises(SystemExit):
        script["main"]([*args, "--only", "2"])  # not a seed of 0..1


def _summary_only_rebuilds_it(script, study, capsys):
    """--summary-only rebuilds the same summary from the study's runs, running no stage."""
    checkpoint = study / "runs" / "seed1" / "cae" / "rollout" / "best.pth"
    before, written = checkpoint.stat().st_mtime_ns, (study / "summary.json").read_text()
    script["main"](["--seeds", "2", "--variants", "cls_last", "rollout", "--bootstrap", "200", "--summary-only",
                    "--out", str(study), *TINY, SETS])
    assert "stage 1:" not in capsys.readouterr().out and checkpoint.stat().st_mtime_ns == before
    assert (study / "summary.json").read_text() == written


def _val_set_rows_and_choices(summary, partners):
    """The val set has its own rows, and each run's `cae+val-chosen` row took a storable partner and a weight of
    the grid."""
    assert {(r["ood_set"], r["group"]) for r in summary["rows"]} == {("heldout", "near"), ("mean", "near"),
                                                                   ("val_held", "val")}
    choices = summary["study"]["val_choices"]
    assert set(choices) == {"0", "1"} and all(set(c) == {"cls_last", "rollout"} for c in choices.values())
    for per_variant in choices.values():
        for choice in per_variant.values():
            assert choice["partner"] in partners and choice["weight"] in WEIGHTS and 0 <= choice["val_auroc"] <= 1
