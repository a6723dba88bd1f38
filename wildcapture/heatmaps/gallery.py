"""A PNG gallery of ID and OOD images beside their attention heatmaps."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves global state alone
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray]


def _as_rgb(img: ImageLike) -> np.ndarray:
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be PIL images or HxWx3 arrays, got shape {arr.shape}.")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255).astype(np.uint8)
    return arr


def _maps(heatmaps: np.ndarray, n: int, group: str) -> np.ndarray:
    if n == 0:
        return np.zeros((0, 1, 1), np.float32)
    arr = np.asarray(heatmaps, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != n:
        raise ValueError(f"{group} heatmaps must have shape ({n}, h, w) for {n} {group} images, "
                         f"got {arr.shape}.")
    return arr


def plot_heatmap_gallery(
    id_images: Sequence[ImageLike],
    id_heatmaps: np.ndarray,
    ood_images: Sequence[ImageLike],
    ood_heatmaps: np.ndarray,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save a grid with one row per image: image | heatmap (patch grid) | heatmap overlay.

    ID rows come first, then OOD rows; each row is labelled ``ID``/``OOD`` (plus its title).

    Args:
        id_images, ood_images: PIL images or HxWx3 uint8 arrays.
        id_heatmaps, ood_heatmaps: (n, h, w) arrays, one per image in the same order.
        path: output PNG path (parent folders are created).
        titles: optional one title per image, ID images first then OOD.

    Returns:
        The path of the written PNG.
    """
    id_hm = _maps(id_heatmaps, len(id_images), "ID")
    ood_hm = _maps(ood_heatmaps, len(ood_images), "OOD")
    rows = [("ID", im, hm) for im, hm in zip(id_images, id_hm)]
    rows += [("OOD", im, hm) for im, hm in zip(ood_images, ood_hm)]
    if not rows:
        raise ValueError("plot_heatmap_gallery needs at least one image.")
    if titles is not None and len(titles) != len(rows):
        raise ValueError(f"got {len(titles)} titles for {len(rows)} images.")

    fig = Figure(figsize=(7.5, 2.5 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for i, (group, img, hm) in enumerate(rows):
        rgb = _as_rgb(img)
        h, w = rgb.shape[:2]
        ax_img, ax_hm, ax_ov = axes[i]
        ax_img.imshow(rgb)
        ax_hm.imshow(hm, cmap="inferno", interpolation="nearest")
        ax_ov.imshow(rgb)
        ax_ov.imshow(hm, cmap="jet", alpha=0.5, interpolation="bilinear", extent=(0, w, h, 0))
        label = group if titles is None else f"{group}\n{titles[i]}"
        ax_img.set_ylabel(label, fontsize=9, color="tab:blue" if group == "ID" else "tab:red")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image", fontsize=9)
    axes[0][1].set_title("CLS attention", fontsize=9)
    axes[0][2].set_title("overlay", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format="png")
    return out
