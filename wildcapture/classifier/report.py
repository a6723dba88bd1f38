"""The classifier report for `test_id`: accuracy, per-class accuracy and the confusion matrix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def classifier_report(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Return {"n", "accuracy", "per_class_accuracy": {name: fraction or None}, "confusion_matrix":
    rows = true class, columns = predicted class, counts}."""
    k = len(class_names)
    confusion = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    per_class = {name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
                 for i, name in enumerate(class_names)}
    return {"n": int(len(labels)), "accuracy": float((labels == predictions).mean()) if len(labels) else None,
            "per_class_accuracy": per_class, "class_names": class_names,
            "confusion_matrix": confusion.tolist()}


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `classifier_report.json` and `confusion_matrix.png` to `out_dir`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "classifier_report.json", out_dir / "confusion_matrix.png"
    json_path.write_text(json.dumps(report, indent=2))
    confusion = np.asarray(report["confusion_matrix"])
    names = report["class_names"]
    size = max(4.0, 0.5 * len(names) + 2)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"test_id confusion matrix (accuracy {report['accuracy']:.4f})")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > confusion.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return json_path, png_path
