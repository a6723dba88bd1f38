"""Gallery of the most and least OOD test images: image, heatmap, CAE input, reconstruction, error."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


@dataclass
class GalleryRow:
    """One test image's panels; `image` is None when the source image cannot be loaded."""

    title: str
    image: Optional[Image.Image]
    heatmap: np.ndarray         # (h, w) raw heatmap from stage 2
    cae_input: np.ndarray       # (S, S) the prepared heatmap the CAE saw
    reconstruction: np.ndarray  # (S, S)


def plot_reconstruction_gallery(rows: Sequence[GalleryRow], path: Path, heading: str = "") -> Path:
    """Save one row per entry (image | heatmap | CAE input | reconstruction | squared error); returns `path`."""
    columns = ("image", "heatmap", "CAE input", "reconstruction", "squared error")
    fig = Figure(figsize=(2.2 * len(columns), 2.2 * max(len(rows), 1) + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(rows), 1), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        panels = (row.image, row.heatmap, row.cae_input, row.reconstruction,
                  (row.reconstruction - row.cae_input) ** 2)
        shared_max = max(float(row.cae_input.max()), 1e-12)  # input and reconstruction on one scale
        limits = (None, float(row.heatmap.max()), shared_max, shared_max, None)
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if panel is None:
                ax.text(0.5, 0.5, "image\nunavailable", ha="center", va="center", fontsize=8)
                continue
            if isinstance(panel, Image.Image):
                ax.imshow(np.asarray(panel.convert("RGB")))
            else:
                ax.imshow(panel, cmap="inferno", vmin=0 if limits[c] is not None else None, vmax=limits[c])
        axes[r, 0].set_ylabel(row.title, fontsize=8)
    if heading:
        fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
