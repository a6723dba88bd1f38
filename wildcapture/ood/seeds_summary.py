"""Results over several stage-1 seeds, per OOD set: mean and spread of each detector's metrics, and a paired
bootstrap interval of its AUROC difference to the set's best feature-based detector; then each group's mean.

Every seed scores the same test images (the data split has its own seed, `data.seed`), so the
differences are paired across detectors and across seeds: per OOD set, one set of resamples of the test_id
and that set's images (`bootstrap.resample_counts`) serves every detector and every seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wildcapture.storage import write_text

from .bootstrap import resample_counts, resampled_auroc
from .metrics import auroc, fpr_at_tpr
from .table import CONVENTION, markdown_table

COLUMNS = ("ood_set", "group", "detector", "family", "auroc_mean", "auroc_std", "fpr95_mean", "fpr95_std", "n_seeds",
           "delta_auroc", "delta_auroc_ci_low", "delta_auroc_ci_high")
CI_PERCENTILES = (2.5, 97.5)
_HEADERS = ("OOD set", "Group", "Detector", "Family", "AUROC mean", "AUROC std", "FPR@95TPR mean", "FPR@95TPR std",
            "Seeds", "dAUROC", "95% CI")
MEAN = "mean"  # the ood_set of a group's mean rows


def family(detector: str) -> str:
    """Return the family of a detector name: `attention` for the CAE (`cae`, `cae[<variant>]`), `fusion`
    for a CAE combined with another score (`cae+<partner>`, `cae+<partner>[<variant>]`), `feature` for
    the rest (stage 2's post-hoc detectors on logits and features: msp, maxlogit, energy, ...)."""
    base = detector.split("[", 1)[0]
    if base == "cae":
        return "attention"
    return "fusion" if base.startswith("cae+") else "feature"


@dataclass
class DetectorRun:
    """One detector on one seed: its metrics (fractions in [0, 1]) and, when known, its per-image scores
    (test_id (n_id,), test_ood (n_ood,)), higher = more OOD; only detectors with scores get an interval."""

    auroc: float
    fpr95: float
    scores: tuple[np.ndarray, np.ndarray] | None = None


def detector_run(id_scores: np.ndarray, ood_scores: np.ndarray) -> DetectorRun:
    """Return the DetectorRun of per-image scores, its metrics computed by `wildcapture.ood.metrics`."""
    scores = (np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64))
    return DetectorRun(auroc(*scores), fpr_at_tpr(*scores, 0.95), scores)


@dataclass
class Summary:
    """The rows (COLUMNS, sorted by auroc_mean, best first), the detector the deltas are taken against
    (None without feature detectors) and the test set sizes (0 when no detector has per-image scores)."""

    rows: list[dict[str, Any]]
    reference: str | None
    n_id: int
    n_ood: int


def _spread(values: np.ndarray) -> float:
    """Sample standard deviation (ddof=1); NaN for a single value, whose spread is undefined."""
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def summarise(runs: Mapping[int, Mapping[str, DetectorRun]], resamples: int = 1000, seed: int = 0) -> Summary:
    """Return the Summary of `runs` ({stage-1 seed: {detector: DetectorRun}}, every detector on every seed).

    auroc_std/fpr95_std are sample standard deviations over seeds (NaN for one seed). The reference is
    the feature detector with the highest mean AUROC. `delta_auroc` is the mean over seeds of
    AUROC(detector) - AUROC(reference); its interval holds the 2.5th and 97.5th percentiles of that mean
    over `resamples` paired resamples (test_id and test_ood resampled separately, drawn by
    np.random.default_rng(`seed`)); NaN for a detector without per-image scores.
    """
    seeds = sorted(runs)
    if not seeds:
        raise ValueError("summarise needs the runs of at least one seed")
    names = list(runs[seeds[0]])
    for s in seeds:
        if set(runs[s]) != set(names):
            raise ValueError(f"seed {s} has detectors {sorted(runs[s])}, seed {seeds[0]} has {sorted(names)}")
    metric = {(d, m): np.array([getattr(runs[s][d], m) for s in seeds]) for d in names for m in ("auroc", "fpr95")}
    with_scores = [d for d in names if all(runs[s][d].scores is not None for s in seeds)]
    features = [d for d in with_scores if family(d) == "feature"]
    reference = max(features, key=lambda d: metric[d, "auroc"].mean()) if features else None
    deltas = _paired_deltas(runs, seeds, with_scores, reference, resamples, seed) if reference else {}
    rows = [{"ood_set": "", "group": "", "detector": d, "family": family(d),
             "auroc_mean": float(metric[d, "auroc"].mean()), "auroc_std": _spread(metric[d, "auroc"]),
             "fpr95_mean": float(metric[d, "fpr95"].mean()), "fpr95_std": _spread(metric[d, "fpr95"]),
             "n_seeds": len(seeds), **dict(zip(COLUMNS[-3:], deltas.get(d, (float("nan"),) * 3)))}
            for d in names]
    rows.sort(key=lambda r: -r["auroc_mean"])
    sizes = [x.size for x in runs[seeds[0]][reference].scores] if reference else [0, 0]
    return Summary(rows, reference, *sizes)


def _paired_deltas(runs: Mapping[int, Mapping[str, DetectorRun]], seeds: Sequence[int], names: Sequence[str],
                   reference: str, resamples: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Return {detector: (delta_auroc, ci_low, ci_high)} against `reference` for `names` (see `summarise`)."""
    n_id, n_ood = (x.size for x in runs[seeds[0]][reference].scores)
    for s in seeds:
        for d in names:
            sizes = tuple(x.size for x in runs[s][d].scores)
            if sizes != (n_id, n_ood):
                raise ValueError(f"detector {d} of seed {s} scores {sizes} test_id/test_ood images, "
                                 f"{reference} of seed {seeds[0]} {(n_id, n_ood)}: not the same test set")
    rng = np.random.default_rng(seed)
    id_counts, ood_counts = resample_counts(n_id, resamples, rng), resample_counts(n_ood, resamples, rng)
    reference_aurocs = {s: resampled_auroc(*runs[s][reference].scores, id_counts, ood_counts) for s in seeds}
    deltas = {}
    for d in names:
        resampled = np.mean([resampled_auroc(*runs[s][d].scores, id_counts, ood_counts) - reference_aurocs[s]
                             for s in seeds], axis=0)
        point = float(np.mean([runs[s][d].auroc - runs[s][reference].auroc for s in seeds]))
        low, high = np.percentile(resampled, CI_PERCENTILES)
        deltas[d] = (point, float(low), float(high))
    return deltas


def paired_delta(before: Mapping[int, DetectorRun], after: Mapping[int, DetectorRun], resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Return (mean over seeds of AUROC(after) - AUROC(before), 2.5th and 97.5th percentiles of that mean over
    paired resamples) for one detector run two ways on the same test images ({seed: DetectorRun} each, with
    scores), e.g. on fp32 and on bf16 heatmaps; the resamples are those `summarise` draws for `seed`."""
    return _paired_deltas({s: {"before": before[s], "after": after[s]} for s in before}, sorted(before), ["after"],
                          "before", resamples, seed)["after"]


def summarise_sets(runs: Mapping[str, Mapping[int, Mapping[str, DetectorRun]]], groups: Mapping[str, str],
                   resamples: int = 1000, seed: int = 0, mean_groups: Sequence[str] = ("near", "far")
                   ) -> dict[str, Summary]:
    """Return {OOD set: its Summary} for `runs` ({set: {seed: {detector: DetectorRun}}}; `groups`: {set: group}),
    each row naming its set and group, plus, with more than one set, {"mean:<group>": Summary} per group of
    `mean_groups` that has a set: per detector the mean over seeds of its mean AUROC (and FPR@95TPR) over the
    group's sets, the std over seeds of that mean, and dAUROC the mean of its per-set dAUROCs (no interval:
    the sets share test_id, so their resamples are not independent)."""
    out: dict[str, Summary] = {}
    for name, per_seed in runs.items():
        summary = summarise(per_seed, resamples, seed)
        for row in summary.rows:
            row.update(ood_set=name, group=groups[name])
        out[name] = summary
    if len(runs) < 2:
        return out
    for group in mean_groups:
        members = [n for n in runs if groups[n] == group]
        if not members:
            continue
        seeds = sorted(runs[members[0]])
        rows = []
        for d in runs[members[0]][seeds[0]]:
            aurocs = np.array([np.mean([runs[n][s][d].auroc for n in members]) for s in seeds])
            fprs = np.array([np.mean([runs[n][s][d].fpr95 for n in members]) for s in seeds])
            deltas = [r["delta_auroc"] for n in members for r in out[n].rows if r["detector"] == d]
            rows.append({"ood_set": MEAN, "group": group, "detector": d, "family": family(d),
                         "auroc_mean": float(aurocs.mean()), "auroc_std": _spread(aurocs),
                         "fpr95_mean": float(fprs.mean()), "fpr95_std": _spread(fprs), "n_seeds": len(seeds),
                         "delta_auroc": float(np.mean(deltas)), "delta_auroc_ci_low": float("nan"),
                         "delta_auroc_ci_high": float("nan")})
        rows.sort(key=lambda r: -r["auroc_mean"])
        out[f"{MEAN}:{group}"] = Summary(rows, None, out[members[0]].n_id, sum(out[n].n_ood for n in members))
    return out


def caption(summaries: Mapping[str, Summary], seeds: Sequence[int], variants: Sequence[str], resamples: int) -> str:
    """Return the caption of the summary table (`summarise_sets`' result): what was run and what each column means."""
    sets = {k: v for k, v in summaries.items() if not k.startswith(f"{MEAN}:")}
    n_id = next(iter(sets.values())).n_id if sets else 0
    per_set = ", ".join(f"{k} {v.n_ood} OOD (reference {v.reference or 'none'})" for k, v in sets.items())
    return (f"Stage-1 seeds {', '.join(map(str, seeds))} ({len(seeds)} runs of the whole pipeline, the same test "
            f"images each: test_id {n_id} ID; OOD sets: {per_set}); heatmap/CAE variants "
            f"{', '.join(variants)}. Mean and sample standard deviation (ddof=1) over seeds; feature detectors "
            f"depend on the seed only. dAUROC = mean over seeds of AUROC(detector) - AUROC(reference), the "
            f"set's feature detector with the highest mean AUROC; [low, high] = 95% paired bootstrap interval "
            f"({resamples} resamples of the test_id images and of the set's, the same for every detector and seed); "
            "an interval above 0 means better than the reference beyond test-set sampling noise; n/a = no "
            "per-image scores. A `mean` row averages a group's sets per seed; its dAUROC is the mean of the sets'.")


def _cell(value: float, digits: int = 4) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def to_markdown(rows: Sequence[Mapping[str, Any]], text: str) -> str:
    """Return the Markdown table of summary `rows` preceded by `text` (the caption) and the metric convention."""
    cells = []
    for r in rows:
        interval = ("n/a" if r["delta_auroc_ci_low"] != r["delta_auroc_ci_low"]
                    else f"[{r['delta_auroc_ci_low']:+.4f}, {r['delta_auroc_ci_high']:+.4f}]")
        delta = "n/a" if r["delta_auroc"] != r["delta_auroc"] else f"{r['delta_auroc']:+.4f}"
        cells.append([str(r["ood_set"]), str(r["group"]), str(r["detector"]), str(r["family"]),
                      _cell(r["auroc_mean"]), _cell(r["auroc_std"]), _cell(r["fpr95_mean"]), _cell(r["fpr95_std"]),
                      str(r["n_seeds"]), delta, interval])
    return "\n".join([text, "", CONVENTION, "", *markdown_table(_HEADERS, cells, "llllrrrrrrl")]) + "\n"


def _json_ready(value: Any) -> Any:
    """`value` with every NaN float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_summary(out: Path, study: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], text: str) -> dict[str, Path]:
    """Write `out/summary.json` ({"study", "caption", "convention", "columns", "rows"}; NaN as null) and
    `out/summary.md`, each atomically; returns {"json", "md"} -> path."""
    paths = {"json": Path(out) / "summary.json", "md": Path(out) / "summary.md"}
    payload = {"study": dict(study), "caption": text, "convention": CONVENTION, "columns": list(COLUMNS),
               "rows": [{c: r[c] for c in COLUMNS} for r in rows]}
    write_text(paths["json"], json.dumps(_json_ready(payload), indent=2) + "\n")
    write_text(paths["md"], to_markdown(rows, text))
    return paths


def read_study_timings(out: Path) -> list[dict[str, Any]]:
    """The stage timings ({"seed", "step", "seconds"}) that `write_summary` recorded in `out/summary.json`; [] when
    there is no summary there."""
    path = Path(out) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8"))["study"]["timings"] if path.is_file() else []
