"""Gallery of the most and least OOD test images: image, heatmap, CAE input, reconstruction, error."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from wildcapture.attention import display_map
from wildcapture.heatmaps.gallery import channel_note

COLUMNS = ("image", "heatmap", "CAE input", "reconstruction", "squared error")


@dataclass
class GalleryRow:
    """One test image's panels; `image` is None when the source image cannot be loaded."""

    title: str
    image: Optional[Image.Image]
    heatmap: np.ndarray         # (h, w) or (C, h, w): the raw heatmap from stage 2
    cae_input: np.ndarray       # (S, S) or (C, S, S): the prepared heatmap the CAE saw
    reconstruction: np.ndarray  # the CAE's output, shaped like cae_input


def row_panels(row: GalleryRow, channel: int | None = None) -> list[np.ndarray]:
    """Return the row's four map panels, each (h, w) or (S, S): heatmap, CAE input and reconstruction as
    `display_map(..., channel)` (channel mean when None), and the squared error (reconstruction - input)^2
    averaged over channels, the per-pixel quantity whose mean is the OOD score."""
    x, y = np.asarray(row.cae_input, dtype=np.float64), np.asarray(row.reconstruction, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"{row.title!r}: CAE input {x.shape} and reconstruction {y.shape} differ in shape")
    error = (y - x) ** 2
    return [display_map(row.heatmap, channel), display_map(x, channel), display_map(y, channel),
            error.mean(axis=0) if error.ndim == 3 else error]


def draw_reconstruction_gallery(rows: Sequence[GalleryRow], heading: str = "", channel: int | None = None) -> Figure:
    """Return a figure with one row per entry and the columns image | heatmap | CAE input | reconstruction |
    squared error (maps from `row_panels`).

    Each map column has ONE colour scale over all rows, from the column's minimum to its maximum, shown
    by the colorbar under it, so rows compare by colour (a least-OOD row is not drawn as hot as a most-OOD
    one). An image that cannot be loaded is a text panel.
    """
    if not rows:
        raise ValueError("draw_reconstruction_gallery needs at least one row")
    panels = [row_panels(row, channel) for row in rows]
    limits = [(min(float(p[c].min()) for p in panels), max(float(p[c].max()) for p in panels))
              for c in range(len(COLUMNS) - 1)]
    fig = Figure(figsize=(2.2 * len(COLUMNS), 2.2 * len(rows) + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(COLUMNS), squeeze=False)
    for r, row in enumerate(rows):
        if row.image is None:
            axes[r, 0].text(0.5, 0.5, "image\nunavailable", ha="center", va="center", fontsize=8)
        else:
            axes[r, 0].imshow(np.asarray(row.image.convert("RGB")))
        axes[r, 0].set_ylabel(row.title, fontsize=8)
        for c, panel in enumerate(panels[r], start=1):
            vmin, vmax = limits[c - 1]
            axes[r, c].imshow(panel, cmap="inferno", interpolation="nearest", vmin=vmin, vmax=vmax)
    heat_c, cae_c = (a.shape[0] if np.ndim(a) == 3 else 1 for a in (rows[0].heatmap, rows[0].cae_input))
    notes = ["", channel_note(heat_c, channel), channel_note(cae_c, channel), channel_note(cae_c, channel),
             channel_note(cae_c, None)]
    for c, name in enumerate(COLUMNS):
        axes[0, c].set_title(name + notes[c], fontsize=9)
        if c:
            fig.colorbar(axes[-1, c].images[0], ax=axes[:, c], location="bottom", shrink=0.9, pad=0.02)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if heading:
        fig.suptitle(heading, fontsize=10)
    return fig


def plot_reconstruction_gallery(rows: Sequence[GalleryRow], path: Path, heading: str = "",
                                channel: int | None = None) -> Path:
    """Save `draw_reconstruction_gallery(rows, heading, channel)` (image | heatmap | CAE input |
    reconstruction | squared error, one colour scale and colorbar per column) as a PNG; returns `path`."""
    fig = draw_reconstruction_gallery(rows, heading, channel)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
