"""OOD AUROC of every detector on bf16 against fp32 stage-2 outputs, over the seeds of a seed study.

    python benchmarks/seeds.py --seeds 5 --out results/digits/seeds_fp32 heatmap.precision=fp32
    python benchmarks/precision_agreement.py results/digits/seeds_fp32 --seeds 5 [--wait]

Reuses the fp32 study's classifiers: for each seed, stages 2-4 of every variant run again with
heatmap.precision=bf16 into `--out` (default: the study folder + `_bf16`), in the study's layout
(wildcapture/study/seed_runs.py). `--wait` starts each seed once the study's stage 1 of that seed is complete,
so this can run beside the study. Then, per detector: the mean over seeds of AUROC(bf16) - AUROC(fp32) with its
95% paired bootstrap interval (the same resamples of the test images for both), beside the 95% bootstrap
interval of its mean fp32 AUROC (test-set sampling noise; same resamples), and for each CAE the "mixed"
case detect.py meets when precisions differ: the CAE trained on fp32 heatmaps scoring bf16 ones. `--seeds`,
`--variants` and key=value items must be those the study ran with. Writes `--out`/agreement.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from wildcapture.cae.checkpoint import load_cae
from wildcapture.cae.engine import CAEDetector
from wildcapture.ood.bootstrap import resample_counts, resampled_auroc
from wildcapture.ood.seeds_summary import CI_PERCENTILES, DetectorRun, detector_run, paired_delta
from wildcapture.paths import resolve_path
from wildcapture.pipeline import run_stage
from wildcapture.stages.score_cae import read_recon_errors
from wildcapture.study.seed_runs import StudyLayout, collect_seed, run_configs
from wildcapture.study.variants import DEFAULT_VARIANTS, Variant, pick_variants


@dataclass(frozen=True)
class ReusedClassifiers(StudyLayout):
    """The layout of the bf16 runs, whose stage-1 classifiers are those of the study in `classifiers`."""

    classifiers: Path = Path()

    def vit(self, seed: int) -> Path:
        return StudyLayout(self.classifiers).vit(seed)


def _wait_for(path: Path, wait: bool) -> None:
    while wait and not path.is_file():
        time.sleep(10)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the fp32 seed study first (or pass --wait)")


def run_bf16(study: StudyLayout, bf16: ReusedClassifiers, benchmark: str, seed: int, variants: Sequence[Variant],
             extra: Sequence[str], wait: bool) -> None:
    """Stages 2-4 of every variant of `seed` with heatmap.precision=bf16, on the study's classifier."""
    _wait_for(study.vit(seed) / "train_classifier.complete.yaml", wait)
    done: set[str] = set()
    for v in variants:
        cfgs = run_configs(benchmark, [*extra, "heatmap.precision=bf16"], bf16, seed, v)
        if v.heatmap_folder not in done:
            run_stage(1, cfgs[1], f"seed {seed}, bf16 heatmaps {v.heatmap_folder}")
            done.add(v.heatmap_folder)
        run_stage(2, cfgs[2], f"seed {seed}, bf16 CAE {v.name}")
        run_stage(3, cfgs[3], f"seed {seed}, bf16 scores {v.name}")


def mixed_runs(study: StudyLayout, bf16: StudyLayout, seed: int, variants: Sequence[Variant]) -> dict[str, DetectorRun]:
    """{`cae[<variant>] mixed`: the study's (fp32-trained) CAE scoring the bf16 test heatmaps}, the images in the
    order of the study's recon_errors.pkl."""
    runs = {}
    for v in variants:
        model, ckpt = load_cae(study.cae(seed, v) / "best.pth")
        cae = CAEDetector(model, ckpt["prep"]["resize"], ckpt["prep"]["norm"], 256, "cpu")
        recon = read_recon_errors(study.scores(seed, v) / "recon_errors.pkl")
        split, rows = np.asarray(recon["split"]), np.asarray(recon["rows"])
        id_split, ood_split = dict.fromkeys(recon["split"])  # test_id, then the one OOD set (`_one_set`)
        scores = [cae.score(np.load(bf16.heatmaps(seed, v) / s / "heatmaps.npy"))[rows[split == s]]
                  for s in (id_split, ood_split)]
        runs[f"cae[{v.name}] mixed"] = detector_run(*scores)
    return runs


def _one_set(per_set: dict[str, dict[str, DetectorRun]], where: Path) -> dict[str, DetectorRun]:
    """The detector runs of a study with one OOD set (this comparison's case: digits); ValueError otherwise."""
    if len(per_set) != 1:
        raise ValueError(f"{where}: this comparison takes a study with one OOD set, not {sorted(per_set)}")
    return next(iter(per_set.values()))


def auroc_interval(runs: dict[int, DetectorRun], resamples: int, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval of the mean over seeds of one detector's AUROC (the resamples `paired_delta`
    draws for `seed`)."""
    n_id, n_ood = (x.size for x in next(iter(runs.values())).scores)
    rng = np.random.default_rng(seed)
    id_counts, ood_counts = resample_counts(n_id, resamples, rng), resample_counts(n_ood, resamples, rng)
    mean = np.mean([resampled_auroc(*r.scores, id_counts, ood_counts) for r in runs.values()], axis=0)
    low, high = np.percentile(mean, CI_PERCENTILES)
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="folder of the fp32 seed study (benchmarks/seeds.py --out)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--benchmark", default="digits")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    parser.add_argument("--out", type=Path, default=None, help="bf16 runs and the report (default: STUDY_bf16)")
    parser.add_argument("--wait", action="store_true", help="wait for the study's runs instead of failing")
    parser.add_argument("--compare-only", action="store_true", help="compare the bf16 runs already in --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the study's key=value items")
    args = parser.parse_args()
    root = resolve_path(args.study)
    study = StudyLayout(root)
    bf16 = ReusedClassifiers(resolve_path(args.out) if args.out else root.with_name(root.name + "_bf16"), root)
    variants = pick_variants(args.variants)
    seeds = range(args.seeds)
    for seed in () if args.compare_only else seeds:
        run_bf16(study, bf16, args.benchmark, seed, variants, args.overrides, args.wait)
    _wait_for(root / "summary.json", args.wait)  # the study has scored every seed
    fp32_runs, bf16_runs = {}, {}
    for seed in seeds:
        fp32_runs[seed] = _one_set(collect_seed(study, seed, variants)[0], study.root)
        bf16_runs[seed] = _one_set(collect_seed(bf16, seed, variants)[0], bf16.root)
        mixed = mixed_runs(study, bf16, seed, variants)
        bf16_runs[seed].update(mixed)
        fp32_runs[seed].update({name: fp32_runs[seed][name.removesuffix(" mixed")] for name in mixed})
    rows = []
    for name in fp32_runs[0]:
        fp32 = {s: fp32_runs[s][name] for s in seeds}
        delta, low, high = paired_delta(fp32, {s: bf16_runs[s][name] for s in seeds}, args.bootstrap)
        auroc_low, auroc_high = auroc_interval(fp32, args.bootstrap)
        mean_fp32 = float(np.mean([fp32_runs[s][name].auroc for s in seeds]))
        mean_bf16 = float(np.mean([bf16_runs[s][name].auroc for s in seeds]))
        rows.append({"detector": name, "auroc_fp32": mean_fp32, "auroc_fp32_ci": [auroc_low, auroc_high],
                     "auroc_bf16": mean_bf16, "delta": delta, "ci_low": low, "ci_high": high,
                     "zero_inside": bool(low <= 0 <= high), "bf16_inside_fp32_ci": bool(auroc_low <= mean_bf16 <= auroc_high)})
    caption = (f"Seeds {', '.join(map(str, seeds))}; AUROC means over seeds; delta = mean over seeds of AUROC(bf16) - "
               f"AUROC(fp32) with its 95% paired bootstrap interval ({args.bootstrap} resamples of the test_id and "
               "OOD images, the same for both precisions); fp32 interval: the 95% bootstrap interval of the mean "
               "fp32 AUROC over the same resamples (test-set sampling noise). 'mixed': the CAE trained on fp32 heatmaps scores "
               "the bf16 heatmaps (fp32 column: that CAE on the fp32 heatmaps).")
    lines = [caption, "", "| detector | AUROC fp32 [95% interval] | AUROC bf16 | inside | delta | paired 95% interval "
             "| 0 inside |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['detector']} | {r['auroc_fp32']:.4f} [{r['auroc_fp32_ci'][0]:.4f}, {r['auroc_fp32_ci'][1]:.4f}] | "
              f"{r['auroc_bf16']:.4f} | {'yes' if r['bf16_inside_fp32_ci'] else 'NO'} | {r['delta']:+.4f} | "
              f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {'yes' if r['zero_inside'] else 'no'} |" for r in rows]
    bf16.root.mkdir(parents=True, exist_ok=True)
    (bf16.root / "agreement.md").write_text("\n".join(lines) + "\n")
    (bf16.root / "agreement.json").write_text(json.dumps({"caption": caption, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
