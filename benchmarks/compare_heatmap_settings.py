"""Compare heatmap kinds and CAE normalisations on one trained classifier (default: digits).

Runs stage 2 once per heatmap kind, then stages 3 and 4 once per normalisation, and prints a
Markdown table of the OOD metrics of the CAE and of its fusion detector (`cae+<partner>`) beside the
post-hoc baselines (which do not depend on the heatmaps). Needs stage 1 first (`python Train_Vit_Classifier/train.py`). Outputs go under
`data/heatmaps/compare-*`, `weights/compare-*` and `results/compare-*`.

    python benchmarks/compare_heatmap_settings.py [--exp digits] [--kinds cls_last rollout] [--norms max minmax none]
"""
from __future__ import annotations

import argparse

from wildcapture.config import load_config
from wildcapture.ood.table import read_table
from wildcapture.paths import REPO_ROOT
from wildcapture.stages import evaluate_classifier, score_cae, train_cae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default="digits", help="experiment whose stage-1 classifier to use")
    parser.add_argument("--preset", default=None, help="stage 2-4 preset (e.g. cifar10.yaml); default configs if unset")
    parser.add_argument("--kinds", nargs="+", default=["cls_last", "rollout"])
    parser.add_argument("--norms", nargs="+", default=["max", "minmax", "none"])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra stage 3/4 overrides, e.g. device=cpu")
    args = parser.parse_args()

    rows, baselines = [], []
    for kind in args.kinds:
        exp = f"compare-{args.exp}-{kind}"
        stage2 = load_config(REPO_ROOT / "Test_Classifier" / "config", args.preset,
                             [f"exp={exp}", f"checkpoint=weights/{args.exp}/vit/best.pth", f"heatmap.kind={kind}"])
        evaluate_classifier.run(stage2)
        for norm in args.norms:
            overrides = [f"exp={exp}", f"cae.norm={norm}", f"output_dir=weights/{exp}/cae-{norm}",
                         f"results_dir=results/{exp}/{norm}", f"heatmaps_dir=data/heatmaps/{exp}",
                         f"test.baseline_scores=results/{exp}/baseline_scores.csv", *args.overrides]
            cae_cfg = load_config(REPO_ROOT / "AutoEncoder" / "config", args.preset, overrides)
            train_cae.run(cae_cfg)
            score_cae.run(cae_cfg)
            table = read_table(REPO_ROOT / f"results/{exp}/{norm}/ood_table.json")
            # cae and the fusion detector (cae+<partner>) depend on the heatmaps; the baselines are the same
            # for every kind and norm: they use logits and features only
            rows += [{"kind": kind, "norm": norm, **r} for r in table if r["detector"].startswith("cae")]
            baselines = [r for r in table if not r["detector"].startswith("cae")]

    print("\n| detector | heatmap | norm | AUROC | AUPR-IN | AUPR-OUT | FPR@95TPR |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['detector']} | {r['kind']} | {r['norm']} | {r['auroc']:.4f} | {r['aupr_in']:.4f} | {r['aupr_out']:.4f} | "
              f"{r['fpr95']:.4f} |")
    for r in baselines:
        print(f"| {r['detector']} | - | - | {r['auroc']:.4f} | {r['aupr_in']:.4f} | {r['aupr_out']:.4f} | "
              f"{r['fpr95']:.4f} |")


if __name__ == "__main__":
    main()
