"""Run the whole pipeline for several stage-1 seeds and heatmap/CAE variants, then summarise over seeds.

Layout under the study folder ROOT (default `results/<exp>/seeds`):

    ROOT/summary.json, ROOT/summary.md        the summary (`wildcapture.ood.seeds_summary`)
    ROOT/runs/seed<S>/vit/                    stage 1 (seed=S)
    ROOT/runs/seed<S>/timings.json            the seed's stage timings, written after its last stage ran
    ROOT/runs/seed<S>/heatmaps/<heatmap>/     stage 2 heatmaps, once per heatmap setting (Variant.heatmap_folder)
    ROOT/runs/seed<S>/stage2/<heatmap>/       stage 2 results: baseline_scores.csv, classifier report
    ROOT/runs/seed<S>/cae/<variant>/          stage 3 (CAE seed = S), once per variant (Variant.folder)
    ROOT/runs/seed<S>/ood/<variant>/          stage 4: ood_table.json, recon_errors.pkl

Every run is redone when the study is run again (stage 2 with overwrite=true): the folders belong to the study.
Stage 1 runs once per seed, stage 2 once per (seed, heatmap setting), stages 3 and 4 once per (seed, variant),
all in this process; `only` runs some seeds' stages and no summary, so that processes sharing ROOT can each run
their own seeds, and a last `summary_only` call summarises them all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wildcapture.config import Config, parse_override
from wildcapture.errors import ConfigError, DatasetError
from wildcapture.data.protocol import TEST_ID
from wildcapture.heatmap_store import read_baseline_scores, read_meta, read_protocol
from wildcapture.storage import read_marker, write_text
from wildcapture.ood.seeds_summary import (CI_PERCENTILES, DetectorRun, caption, detector_run, read_study_timings,
                                           summarise_sets, to_markdown, write_summary)
from wildcapture.paths import portable_path, resolve_path
from wildcapture.pipeline import (STAGES, check_pipeline, check_stage_configs, run_stage, stage_configs,
                                  stage_of_item)
from wildcapture.stages.score_cae import read_recon_errors

from .fusion_weight import cae_val_errors_in_order, choose, chosen_scores
from .partner_fusion import cae_val_errors, check_agrees, fuse_with_partners, partner_val_scores
from .variants import Variant


# A study reads its numbers from the tables; the image galleries of stages 2 and 4 would only cost time.
GALLERIES_OFF = ("gallery_size=0", "test.gallery_size=0")


@dataclass(frozen=True)
class StudyLayout:
    """The folders of one study: each method returns the folder of the layout in the module docstring."""

    root: Path
    classifiers: Path | None = None  # another study's folder whose stage-1 classifiers this one reuses

    def seed_dir(self, seed: int) -> Path:
        return self.root / "runs" / f"seed{seed}"

    def timings(self, seed: int) -> Path:
        return self.seed_dir(seed) / "timings.json"

    def vit(self, seed: int) -> Path:
        return (StudyLayout(self.classifiers) if self.classifiers else self).seed_dir(seed) / "vit"

    def heatmaps(self, seed: int, variant: Variant) -> Path:
        return self.seed_dir(seed) / "heatmaps" / variant.heatmap_folder

    def stage2_results(self, seed: int, variant: Variant) -> Path:
        return self.seed_dir(seed) / "stage2" / variant.heatmap_folder

    def cae(self, seed: int, variant: Variant) -> Path:
        return self.seed_dir(seed) / "cae" / variant.folder

    def scores(self, seed: int, variant: Variant) -> Path:
        return self.seed_dir(seed) / "ood" / variant.folder


def default_root(benchmark: str, extra: Sequence[str]) -> Path:
    """The study folder when none is given: `results/<exp>/seeds`, exp being the stage configs' (after `extra`)."""
    return resolve_path(f"results/{stage_configs(benchmark, extra=extra)[0]['exp']}/seeds")


def _per_stage(layout: StudyLayout, seed: int, variant: Variant) -> tuple[tuple[str, ...], ...]:
    """The items of each stage that place the run's files in `layout` and apply the variant."""
    heat, stage2 = layout.heatmaps(seed, variant), layout.stage2_results(seed, variant)
    cae = (f"heatmaps_dir={heat}", f"output_dir={layout.cae(seed, variant)}",
           f"results_dir={layout.scores(seed, variant)}", f"test.baseline_scores={stage2 / 'baseline_scores.csv'}",
           "test.checkpoint=null", *variant.cae)
    return ((f"output_dir={layout.vit(seed)}",),
            (f"checkpoint={layout.vit(seed) / 'best.pth'}", f"heatmaps_dir={heat}", f"results_dir={stage2}",
             "overwrite=true", *variant.heatmap),
            cae, cae)


def run_configs(benchmark: str, extra: Sequence[str], layout: StudyLayout, seed: int, variant: Variant) -> list[Config]:
    """Return the four stage configs of one (seed, variant) run: no galleries (`GALLERIES_OFF`, which `extra` may
    override), `extra` items in every stage that has the key, `seed=<seed>` (stage 1's, and the CAE's), then the
    run's own paths and the variant's items.

    ConfigError when `extra` sets a key the study sets per run (seed, paths, overwrite, the variant's keys).
    """
    per_stage = _per_stage(layout, seed, variant)
    owned = {"seed", *(parse_override(item)[0] for items in per_stage for item in items)}
    for item in extra:
        key = parse_override(stage_of_item(item)[1])[0]
        if key in owned:
            raise ConfigError(f"{item}: the seed study sets {key} for each run itself (see "
                              "wildcapture/study/seed_runs.py); use --out for the study folder, --variants for the "
                              "heatmap/CAE settings")
    return stage_configs(benchmark, False, [*GALLERIES_OFF, *extra, f"seed={seed}"], per_stage)


def run_seed(configs: dict[str, list[Config]], variants: Sequence[Variant], seed: int,
             train_classifier: bool = True) -> list[dict[str, Any]]:
    """Run every stage of one seed (`configs`: variant name -> its four stage configs; stage 1 only when
    `train_classifier`); returns the timings, one {"seed", "step", "seconds"} per stage run."""
    timings = []

    def step(index: int, cfg: Config, what: str) -> None:
        _, seconds = run_stage(index, cfg, f"seed {seed}, {what}")
        timings.append({"seed": seed, "step": f"stage {index + 1} {what}", "seconds": seconds})

    if train_classifier:
        step(0, configs[variants[0].name][0], "classifier")
    done: set[str] = set()
    for v in variants:
        if v.heatmap_folder not in done:
            step(1, configs[v.name][1], f"heatmaps {v.heatmap_folder}")
            done.add(v.heatmap_folder)
        step(2, configs[v.name][2], f"CAE {v.name}")
        step(3, configs[v.name][3], f"scores {v.name}")
    return timings


def _chosen_on_val(layout: StudyLayout, seed: int, v: Variant, val_splits: Sequence[str],
                   cae_test: dict[str, np.ndarray], partner_test: dict[str, dict[str, np.ndarray]],
                   partner_val: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The fusion of variant v's CAE whose partner and weight this run chooses on val_id against `val_splits`
    (`fusion_weight`): ({split: its scores}, the choice as {"partner", "weight", "val_auroc"})."""
    cae_val = cae_val_errors_in_order(layout.cae(seed, v) / "best.pth", layout.heatmaps(seed, v))
    choice = choose(cae_val, partner_val, {s: cae_test[s] for s in val_splits},
                    {p: {s: scores[s] for s in val_splits} for p, scores in partner_test.items() if p in partner_val})
    return (chosen_scores(choice, cae_val, partner_val, cae_test, partner_test),
            {"partner": choice.partner, "weight": choice.weight, "val_auroc": round(choice.val_auroc, 6)})


def collect_seed(layout: StudyLayout, seed: int, variants: Sequence[Variant]
                 ) -> tuple[dict[str, dict[str, DetectorRun]], list[str], dict[str, str], dict[str, dict[str, Any]]]:
    """Return ({OOD set: {detector: DetectorRun}} of one seed, the test images' ids in score order, {OOD set:
    group}, {variant: the partner and weight its `cae+val-chosen` row chose}).

    Feature detectors come from the baseline scores of the first variant's stage-2 run, `cae[<variant>]` from
    each variant's recon_errors.pkl, and `cae+<partner>[<variant>]` for every fusion partner from it and the
    variant's own stage-2 run, as stage 4 fuses (`partner_fusion`; the partner stage 4 fused must agree with stage
    4's scores). Where the protocol has `val` OOD sets, `cae+val-chosen[<variant>]` is the fusion whose partner
    and weight the run chose on them (`fusion_weight`). DatasetError when the variants' test images differ.
    """
    first = variants[0]
    protocol = read_protocol(read_meta(layout.heatmaps(seed, first)))
    stage2: dict[str, tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]] = {}  # per heatmap setting

    def stage2_scores(v: Variant) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """(the baseline scores {detector: {split: scores}}, the partners' val_id scores) of v's stage-2 run."""
        if v.heatmap_folder not in stage2:
            heat = layout.heatmaps(seed, v)
            stage2[v.heatmap_folder] = (read_baseline_scores(layout.stage2_results(seed, v) / "baseline_scores.csv",
                                                             read_meta(heat)), partner_val_scores(heat))
        return stage2[v.heatmap_folder]

    runs = {o.name: {name: detector_run(scores[TEST_ID], scores[o.split]) for name, scores in
                     stage2_scores(first)[0].items()} for o in protocol.ood_sets}
    ids, choices, val_splits = None, {}, [o.split for o in protocol.in_group("val")]
    for v in variants:
        folder = layout.scores(seed, v)
        recon = read_recon_errors(folder / "recon_errors.pkl")
        if ids is None:
            ids = list(recon["ids"])
        elif list(recon["ids"]) != ids:
            raise DatasetError(f"{folder} scores other test images than {layout.scores(seed, first)}: "
                               "the runs of a study must share the data split")
        split = np.asarray(recon["split"])
        per_split = {s: np.asarray(recon["errors"], dtype=np.float64)[split == s] for s in protocol.test_splits}
        partner_test, partner_val = stage2_scores(v)
        stored_val, weight = cae_val_errors(layout.cae(seed, v) / "best.pth")
        fused = fuse_with_partners(stored_val, partner_val, per_split, partner_test, weight)
        if recon["fusion"]:
            stage4 = np.asarray(recon["fusion_scores"], dtype=np.float64)
            check_agrees(fused[recon["fusion"]], {s: stage4[split == s] for s in protocol.test_splits},
                         f"{recon['fusion']} of {folder}")
        if val_splits:
            fused["cae+val-chosen"], choices[v.name] = _chosen_on_val(layout, seed, v, val_splits, per_split,
                                                                      partner_test, partner_val)
        for name, scores in {"cae": per_split, **fused}.items():
            for o in protocol.ood_sets:
                runs[o.name][f"{name}[{v.name}]"] = detector_run(scores[TEST_ID], scores[o.split])
    return runs, ids, {o.name: o.group for o in protocol.ood_sets}, choices


def _checked_configs(benchmark: str, seeds: Sequence[int], variants: Sequence[Variant], extra: Sequence[str],
                     root: Path | None, resamples: int, classifiers: Path | None
                     ) -> tuple[StudyLayout, dict[int, dict[str, list[Config]]]]:
    """The study's layout and every run's four stage configs ({seed: {variant: configs}}), each range-checked;
    with `classifiers`, every seed's reused stage-1 run must be complete there."""
    if resamples < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {resamples}")
    layout = StudyLayout(resolve_path(root) if root else default_root(benchmark, extra),
                         resolve_path(classifiers) if classifiers else None)
    for s in seeds if classifiers else ():
        read_marker(layout.vit(s) / "train_classifier.complete.yaml", (), f"stage 1 of seed {s} in {classifiers}")
    configs = {s: {v.name: run_configs(benchmark, extra, layout, s, v) for v in variants} for s in seeds}
    for per_variant in configs.values():
        for cfgs in per_variant.values():
            check_stage_configs(cfgs)
    return layout, configs


def _check_only(seeds: Sequence[int], only: Sequence[int] | None, summary_only: bool = False) -> None:
    """ConfigError unless `only` (run_study's) is None or distinct seeds of `seeds`, without `summary_only`."""
    if only is not None and (summary_only or not set(only) <= set(seeds) or len(set(only)) != len(only)):
        raise ConfigError(f"--only takes distinct seeds of 0..{max(seeds)} and no --summary-only, got {list(only)}")


def check_study(benchmark: str, seeds: Sequence[int], variants: Sequence[Variant], extra: Sequence[str] = (),
                root: Path | None = None, resamples: int = 1000, classifiers: Path | None = None,
                only: Sequence[int] | None = None) -> tuple[dict[str, Config], list[Path]]:
    """What `seeds.py --check` checks, writing nothing: every run's configs (`run_study`'s checks) and the data
    of stage 1 (never downloaded). Returns (the four stage configs of the first run, by stage, and what the study
    writes: each run's folder, then the summary; with `only`, those seeds' folders alone, as `run_study`)."""
    _check_only(seeds, only)
    seeds = only or seeds
    layout, configs = _checked_configs(benchmark, seeds, variants, extra, root, resamples, classifiers)
    first = configs[seeds[0]][variants[0].name]
    if classifiers is None:
        check_pipeline(first)
    return ({name: cfg for (name, *_), cfg in zip(STAGES, first)},
            [*(layout.seed_dir(s) for s in seeds),
             *((layout.root / "summary.json", layout.root / "summary.md") if only is None else ())])


def _stored_timings(layout: StudyLayout, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The stage timings of the seeds' runs already in the study folder: each seed's timings.json, or for a seed
    without one (a study written before they existed), its entries in the summary.json there."""
    summary = read_study_timings(layout.root)
    timings = []
    for s in seeds:
        path = layout.timings(s)
        timings += (json.loads(path.read_text(encoding="utf-8")) if path.is_file()
                    else [t for t in summary if t["seed"] == s])
    return timings


def run_study(benchmark: str, seeds: Sequence[int], variants: Sequence[Variant], extra: Sequence[str] = (),
              root: Path | None = None, resamples: int = 1000, bootstrap_seed: int = 0,
              classifiers: Path | None = None, summary_only: bool = False,
              only: Sequence[int] | None = None) -> dict[str, Any]:
    """Run every (seed, variant), summarise over seeds and write ROOT/summary.{json,md}. With `classifiers` (another
    study's folder), stage 1 is not run: each seed reuses that study's complete classifier. With `summary_only`, no
    stage runs: the summary is rebuilt from the runs already in ROOT/runs (each run's files checked as it is read),
    with the timings those runs recorded. With `only` (some of `seeds`), only those seeds' stages run and nothing is
    summarised.

    Every config is built and range-checked before the first stage runs. Returns {"summaries": {OOD set (and
    "mean:<group>"): Summary}, "rows": every row, "markdown": the table with its caption, "timings": [{"seed", "step",
    "seconds"}], "paths": the files} ({"timings", "paths"} alone with `only`).
    """
    _check_only(seeds, only, summary_only)
    layout, configs = _checked_configs(benchmark, only or seeds, variants, extra, root, resamples, classifiers)
    for s in ([] if summary_only else only or seeds):
        seed_timings = run_seed(configs[s], variants, s, train_classifier=classifiers is None)
        write_text(layout.timings(s), json.dumps(seed_timings, indent=1) + "\n")
    if only is not None:
        return {"timings": _stored_timings(layout, only), "paths": {"timings": [layout.timings(s) for s in only]}}
    timings, runs, test_ids, groups = _stored_timings(layout, seeds), {}, None, {}
    val_choices = {}
    for s in seeds:
        per_set, ids, groups, val_choices[str(s)] = collect_seed(layout, s, variants)
        for name, seed_runs in per_set.items():
            runs.setdefault(name, {})[s] = seed_runs
        if test_ids is not None and ids != test_ids:
            raise DatasetError(f"seed {s} scores other test images than seed {seeds[0]}: the pairing over seeds "
                               "needs one data split (data.seed) for every seed")
        test_ids = ids
    summaries = summarise_sets(runs, groups, resamples, bootstrap_seed)
    rows = [row for summary in summaries.values() for row in summary.rows]
    text = caption(summaries, seeds, [v.name for v in variants], resamples)
    study = {"benchmark": benchmark, "seeds": list(seeds), "overrides": list(extra),
             "variants": [{"name": v.name, "heatmap": list(v.heatmap), "cae": list(v.cae)} for v in variants],
             "bootstrap": {"resamples": resamples, "seed": bootstrap_seed, "percentiles": list(CI_PERCENTILES)},
             "ood_sets": {name: {"group": groups.get(name, ""), "reference": summary.reference, "n_id": summary.n_id,
                                 "n_ood": summary.n_ood} for name, summary in summaries.items()},
             "runs": portable_path(layout.root / "runs"), "timings": timings, "val_choices": val_choices,
             "classifiers": portable_path(layout.vit(seeds[0]).parent.parent) if classifiers else None}
    paths = write_summary(layout.root, study, rows, text)
    return {"summaries": summaries, "rows": rows, "markdown": to_markdown(rows, text), "timings": timings,
            "paths": paths}
