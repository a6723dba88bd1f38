"""The OOD results table: one row per detector per OOD set, then the group means, as Markdown, CSV and JSON."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from wildcapture.storage import write_text

from .metrics import METRIC_NAMES, ood_metrics

CONVENTION = (
    "OOD = positive class; higher score = more OOD; FPR@95TPR = fraction of ID flagged at the "
    "threshold catching 95% of OOD; values are fractions in [0,1]. "
    "AUROC, AUPR-IN, AUPR-OUT: higher is better; FPR@95TPR: lower is better."
)
COLUMNS = ("detector", "ood_set", "group") + METRIC_NAMES + ("n_id", "n_ood")
_TEXT = ("detector", "ood_set", "group")
_HEADERS = ("Detector", "OOD set", "Group", "AUROC", "AUPR-IN", "AUPR-OUT", "FPR@95TPR", "N ID", "N OOD")
MEAN = "mean"  # the ood_set of a group's mean row


def ood_rows(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], ood_set: str = "", group: str = "") -> list[dict]:
    """One row per detector, in the order given, for one OOD set (`ood_set`, `group`).

    `scores` maps detector name -> (id_scores (N_id,), ood_scores (N_ood,)). Each row is a dict
    with keys COLUMNS: "detector", "ood_set", "group" (str), the four metrics (float fractions), "n_id", "n_ood".
    """
    rows = []
    for name, (id_scores, ood_scores) in scores.items():
        try:
            values = ood_metrics(id_scores, ood_scores)
        except ValueError as err:
            raise ValueError(f"detector {name!r}: {err}") from None
        rows.append({"detector": str(name), "ood_set": ood_set, "group": group, **values,
                     "n_id": int(np.asarray(id_scores).size), "n_ood": int(np.asarray(ood_scores).size)})
    return rows


def ood_set_rows(scores: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]], groups: Mapping[str, str],
                 mean_groups: Sequence[str] = ("near", "far")) -> list[dict]:
    """The OOD table's rows: per OOD set (in the order of `groups`, {set name: group}) one row per detector; then,
    when there is more than one set, per group of `mean_groups` that has a set, one row per detector whose
    metrics are the means over the group's sets (ood_set `MEAN`, n_ood the group's total), as OpenOOD reports.

    `scores` maps detector name -> (id_scores (N_id,), {set name: ood_scores (N_set,)}).
    """
    per_set = [row for name, group in groups.items()
               for row in ood_rows({d: (id_s, ood[name]) for d, (id_s, ood) in scores.items()}, name, group)]
    if len(groups) < 2:
        return per_set
    means = []
    for group in mean_groups:
        for detector in scores:
            members = [r for r in per_set if r["group"] == group and r["detector"] == detector]
            if members:
                means.append({"detector": detector, "ood_set": MEAN, "group": group,
                              **{m: float(np.mean([r[m] for r in members])) for m in METRIC_NAMES},
                              "n_id": members[0]["n_id"], "n_ood": int(sum(r["n_ood"] for r in members))})
    return per_set + means


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    """Return the lines of a Markdown table: `headers`, the alignment row (`align` has one letter per column:
    "l" left, "r" right) and one line per row of cells."""
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def to_markdown(rows: list[dict], caption: str = "") -> str:
    """A Markdown table (metrics to 4 decimals) preceded by `caption` and the metric convention."""
    cells = ([*(str(row[k]) for k in _TEXT), *(f"{float(row[m]):.4f}" for m in METRIC_NAMES), str(int(row["n_id"])),
              str(int(row["n_ood"]))] for row in rows)
    lines = [*([caption.strip(), ""] if caption.strip() else []), CONVENTION, "",
             *markdown_table(_HEADERS, cells, "l" * len(_TEXT) + "r" * (len(_HEADERS) - len(_TEXT)))]
    return "\n".join(lines) + "\n"


def _to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(row[k])) if k in METRIC_NAMES else row[k]) for k in COLUMNS})
    return buf.getvalue()


def write_table(rows: list[dict], out_dir: str | Path, stem: str = "ood_table", caption: str = "") -> dict[str, Path]:
    """Write `out_dir/stem.{md,csv,json}`; returns {"md", "csv", "json"} -> path.

    The CSV and JSON keep full float precision; the JSON also holds the caption and convention.
    Each file is written to a temporary file and renamed, so none is ever half-written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
    clean = [{k: (float(r[k]) if k in METRIC_NAMES else int(r[k]) if k in ("n_id", "n_ood") else str(r[k]))
              for k in COLUMNS} for r in rows]
    write_text(paths["md"], to_markdown(clean, caption))
    write_text(paths["csv"], _to_csv(clean))
    payload = {"caption": caption, "convention": CONVENTION, "columns": list(COLUMNS), "rows": clean}
    write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    return paths


def read_table(path: str | Path) -> list[dict]:
    """Read rows back from a .csv or .json written by `write_table` (metrics as float, counts as int)."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))["rows"]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            return [{k: (float(v) if k in METRIC_NAMES else int(v) if k in ("n_id", "n_ood") else v)
                     for k, v in row.items()} for row in csv.DictReader(fh)]
    raise ValueError(f"read_table: expected a .csv or .json file, got {path}")
