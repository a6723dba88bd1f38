"""Which classifier size gives the best val_id accuracy in a fixed wall-clock budget of stage 1.

Each candidate is a ViT width and depth (patch size, heads and the rest stay the benchmark's, so the heatmap grid
is unchanged). The search has three steps, each one command of `benchmarks/budget_search.py`:

plan     times each candidate's epoch with `benchmarks/bench_train_epoch.py` (stage 1's own data path, the
         median of `PLAN_REPEATS` passes over the first `PLAN_BATCHES` batches, one thread, two candidates side by
         side as two `run` processes share a 2-core machine) and gives it the most epochs that fit the budget
         (`epochs_in_budget`); writes <root>/plan.json
run      trains the named candidates' stage 1 with their planned epochs, one after the other, into
         <root>/runs/<name>/ (a stage-1 output folder), then writes <root>/runs/<name>.seconds.json
summary  reads every finished run: its best val_id accuracy (stage 1's completion marker: the selection
         criterion), its test_id accuracy (for the report only, never for the choice) and its wall time; writes
         <root>/summary.json and <root>/summary.md, the candidates ordered by val_id accuracy
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from wildcapture.config import Config
from wildcapture.errors import ConfigError, DatasetError
from wildcapture.storage import read_marker, write_text

# Each candidate's timing: the median of PLAN_REPEATS passes over its first PLAN_BATCHES batches (one pass of 24
# batches misjudged the rate by up to 1.6x on a shared 2-core VM).
PLAN_BATCHES, PLAN_REPEATS = 48, 3


@dataclass(frozen=True)
class Candidate:
    """A classifier size: `name` (d<width>x<depth>) and the model items that make it."""
    name: str
    embed_dim: int
    depth: int

    @property
    def items(self) -> tuple[str, ...]:
        return (f"model.embed_dim={self.embed_dim}", f"model.depth={self.depth}")


CANDIDATES = {c.name: c for c in (Candidate("d128x6", 128, 6), Candidate("d96x6", 96, 6),
                                  Candidate("d64x6", 64, 6), Candidate("d128x4", 128, 4))}


def pick_candidates(names: Sequence[str]) -> list[Candidate]:
    """The candidates called `names`; ConfigError naming the known ones for any other name."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ConfigError(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    return [CANDIDATES[n] for n in names]


def epoch_seconds(timing: dict[str, Any]) -> float:
    """One stage-1 epoch's seconds from a bench_train_epoch JSON result: the timed batches' seconds scaled to every
    training image, plus one validation pass."""
    return timing["epoch_s"] * timing["train_images"] / timing["images"] + timing["val_s"]


def epochs_in_budget(timing: dict[str, Any], budget_s: float) -> int:
    """The most whole epochs (at least 1) of stage 1 that fit in `budget_s` seconds after the set-up (data, image
    cache: `timing["setup_s"]`, paid once), at `epoch_seconds(timing)` each."""
    return max(1, math.floor((budget_s - timing["setup_s"]) / epoch_seconds(timing)))


def time_candidate(benchmark: str, extra: Sequence[str], candidate: Candidate) -> dict[str, Any]:
    """Run bench_train_epoch on `candidate` in a child process (one thread); returns its JSON result."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_epoch.py"
    argv = [sys.executable, str(script), "--benchmark", benchmark, *extra, *candidate.items,
            "--batches", str(PLAN_BATCHES), "--repeats", str(PLAN_REPEATS), "--threads", "1", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise DatasetError(f"timing {candidate.name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def plan(root: Path, benchmark: str, extra: Sequence[str], candidates: Sequence[Candidate],
         budget_s: float) -> dict[str, Any]:
    """Time every candidate, two side by side (as two `run` processes share a 2-core machine), and write
    <root>/plan.json: {"benchmark", "extra", "budget_s", "candidates": {name: {"items", "epochs", "epoch_s"
    (estimated seconds), "timing" (bench_train_epoch's JSON)}}}; returns it. ConfigError, before any timing, when
    <root>/runs holds runs: they were trained to the plan there, which a new plan would replace."""
    trained = sorted(p.name for p in (root / "runs").glob("*") if p.is_dir()) if (root / "runs").is_dir() else []
    if trained:
        raise ConfigError(f"{root / 'runs'} holds runs trained to {root / 'plan.json'} ({', '.join(trained)}): "
                          "plan into another --out, or move them away")
    with ThreadPoolExecutor(max_workers=2) as pool:
        timings = list(pool.map(lambda c: time_candidate(benchmark, extra, c), candidates))
    out: dict[str, Any] = {"benchmark": benchmark, "extra": list(extra), "budget_s": budget_s, "candidates": {}}
    for candidate, timing in zip(candidates, timings):
        epoch_s, epochs = epoch_seconds(timing), epochs_in_budget(timing, budget_s)
        out["candidates"][candidate.name] = {"items": list(candidate.items), "epochs": epochs,
                                             "epoch_s": round(epoch_s, 1), "timing": timing}
        print(f"{candidate.name}: {epoch_s:.0f} s an epoch, {epochs} epochs in {budget_s:.0f} s", flush=True)
    write_text(root / "plan.json", json.dumps(out, indent=1) + "\n")
    return out


def read_plan(root: Path) -> dict[str, Any]:
    """<root>/plan.json as `plan` wrote it; DatasetError when there is none."""
    path = root / "plan.json"
    if not path.is_file():
        raise DatasetError(f"{path} is missing: run the plan step first")
    return json.loads(path.read_text())


def run_config(root: Path, planned: dict[str, Any], name: str, seed: int) -> Config:
    """Stage 1's config for candidate `name` of `planned` (read_plan's), its output in <root>/runs/<name>."""
    from wildcapture.pipeline import stage_configs

    if name not in planned["candidates"]:
        raise ConfigError(f"{name} is not in {root / 'plan.json'} (planned: {', '.join(planned['candidates'])})")
    entry = planned["candidates"][name]
    items = [*planned["extra"], *entry["items"], f"train.epochs={entry['epochs']}", f"seed={seed}",
             f"output_dir={root / 'runs' / name}"]
    return stage_configs(planned["benchmark"], False, items)[0]


def run(root: Path, names: Sequence[str], seed: int = 0) -> None:
    """Train each named candidate's stage 1 as planned, one after the other, writing <root>/runs/<name>.seconds.json
    ({"seconds", "machine"}) after each run."""
    from wildcapture.machine import machine_line
    from wildcapture.pipeline import run_stage

    planned = read_plan(root)
    configs = [run_config(root, planned, name, seed) for name in names]  # every name checked before any run
    for name, cfg in zip(names, configs):
        started = time.perf_counter()
        run_stage(0, cfg, f"budget search, {name}")
        seconds = {"seconds": round(time.perf_counter() - started, 1), "machine": machine_line(cfg["device"])}
        write_text(root / "runs" / f"{name}.seconds.json", json.dumps(seconds) + "\n")


def accuracy_on_test_id(root: Path, planned: dict[str, Any], name: str) -> tuple[float, int]:
    """(test_id accuracy of <root>/runs/<name>/best.pth, its parameter count), on the benchmark's test_id split
    through stage 2's own loading (`load_classifier`), on the CPU without autocast."""
    import torch
    from torch.utils.data import DataLoader

    from wildcapture.classifier.engine import evaluate
    from wildcapture.data.protocol import TEST_ID
    from wildcapture.pipeline import stage_configs
    from wildcapture.stages.evaluate_classifier import load_classifier

    items = [*planned["extra"], f"checkpoint={root / 'runs' / name / 'best.pth'}"]
    model, bench, _ = load_classifier(stage_configs(planned["benchmark"], False, items)[1], download=False)
    loader = DataLoader(bench.splits[TEST_ID], batch_size=512)
    accuracy = evaluate(model, loader, torch.device("cpu"), amp=False, progress=False)["val_acc"]
    return accuracy, sum(p.numel() for p in model.parameters())


def summarise(root: Path) -> dict[str, Any]:
    """Read every finished run of <root>; write and return {"rows": [...] (best val_id accuracy first),
    "markdown"}. A candidate without a finished run is listed as `not run` (its accuracy null)."""
    from wildcapture.stages.evaluate_classifier import STAGE1_MARKER

    planned, rows = read_plan(root), []
    for name, entry in planned["candidates"].items():
        row = {"candidate": name, "epochs": entry["epochs"], "epoch_s": entry["epoch_s"], "val_acc": None,
               "test_acc": None, "params": None, "seconds": None}
        folder = root / "runs" / name
        if (folder / STAGE1_MARKER).is_file():
            row["val_acc"] = read_marker(folder / STAGE1_MARKER, ("best_val_acc",))["best_val_acc"]
            row["test_acc"], row["params"] = accuracy_on_test_id(root, planned, name)
            timing = folder.with_name(f"{name}.seconds.json")
            row["seconds"] = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
        rows.append(row)
    rows.sort(key=lambda r: (r["val_acc"] is None, -(r["val_acc"] or 0.0)))  # unfinished runs last
    result = {"budget_s": planned["budget_s"], "benchmark": planned["benchmark"], "extra": planned["extra"],
              "rows": rows, "markdown": _markdown(planned, rows)}
    write_text(root / "summary.json", json.dumps(result, indent=1) + "\n")
    write_text(root / "summary.md", result["markdown"])
    return result


def _markdown(planned: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def pct(value: float | None) -> str:
        return "not run" if value is None else f"{100 * value:.1f}"

    lines = [f"Stage 1 of {planned['benchmark']} ({' '.join(planned['extra'])}) in a budget of "
             f"{planned['budget_s'] / 60:.0f} min; chosen on val_id (test_id for the report only).", "",
             "| candidate | parameters | epochs | s/epoch (planned) | wall s | val_id acc % | test_id acc % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = "" if r["params"] is None else f"{r['params'] / 1e6:.2f} M"
        wall = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['candidate']} | {params} | {r['epochs']} | {r['epoch_s']:.0f} | {wall} | "
                     f"{pct(r['val_acc'])} | {pct(r['test_acc'])} |")
    return "\n".join(lines) + "\n"
