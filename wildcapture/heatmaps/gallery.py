"""A PNG gallery of ID and OOD images beside their attention heatmaps, overlaid where the model looked."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves global state alone
from matplotlib.patches import Rectangle
from PIL import Image

from wildcapture.data.transforms import centre_crop_box
from wildcapture.attention import as_channels, display_map

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


def _maps(heatmaps: np.ndarray | None, n: int, group: str) -> np.ndarray:
    """Return `n` images' heatmaps (n, h, w) or (n, C, h, w) as float32 (n, C, h, w)."""
    if n == 0:
        return np.zeros((0, 1, 1, 1), np.float32)
    arr = np.asarray(heatmaps, dtype=np.float32)
    if arr.ndim not in (3, 4) or arr.shape[0] != n:
        raise ValueError(f"{group} heatmaps must have shape ({n}, h, w) or ({n}, C, h, w) for {n} {group} "
                         f"images, got {arr.shape}.")
    return as_channels(arr)


def overlay_extent(width: int, height: int, input_size: Sequence[int]) -> tuple[float, float, float, float]:
    """Return the imshow `extent` (left, right, bottom, top) that lays a heatmap over the part of a
    width x height image the model saw (`centre_crop_box`), for an image drawn by imshow at its pixel
    centres (pixel column i spans i - 0.5 .. i + 0.5): each heatmap cell covers exactly its patch's pixels."""
    x0, y0, x1, y1 = centre_crop_box(width, height, input_size)
    return x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5


def channel_note(channels: int, channel: int | None) -> str:
    """Return the line a panel title gets for a map of `channels` channels shown as `display_map(map,
    channel)`: "" for one channel, else "\n(mean of C channels)" or "\n(channel k of C)"."""
    if channels == 1:
        return ""
    return f"\n(mean of {channels} channels)" if channel is None else f"\n(channel {channel} of {channels})"


def draw_heatmap_gallery(
    id_images: Sequence[ImageLike],
    id_heatmaps: np.ndarray | None,
    ood_images: Sequence[ImageLike],
    ood_heatmaps: np.ndarray | None,
    input_size: Sequence[int],
    titles: Sequence[str] | None = None,
    channel: int | None = None,
) -> Figure:
    """Return a figure with one row per image (ID rows first, then OOD, each labelled ``ID``/``OOD`` plus
    its title) and three columns:

    - image: the whole image the loader gives (crop of a detection box applied);
    - heatmap: the patch grid as stored, 0 (dark) to the row's maximum, with its colorbar;
    - overlay: the image with the heatmap drawn, cell by cell (no smoothing), only over the centre crop
      the model saw (`centre_crop_box` for the model's `input_size` = (H, W)), outlined in white.

    Heatmaps are (n, h, w) or (n, C, h, w), one per image in the same order; a multi-channel map is
    shown as `display_map(map, channel)`: the channel mean when `channel` is None.
    """
    id_hm = _maps(id_heatmaps, len(id_images), "ID")
    ood_hm = _maps(ood_heatmaps, len(ood_images), "OOD")
    rows = [("ID", im, hm) for im, hm in zip(id_images, id_hm)]
    rows += [("OOD", im, hm) for im, hm in zip(ood_images, ood_hm)]
    if not rows:
        raise ValueError("draw_heatmap_gallery needs at least one image.")
    if titles is not None and len(titles) != len(rows):
        raise ValueError(f"got {len(titles)} titles for {len(rows)} images.")
    if id_images and ood_images and id_hm.shape[1] != ood_hm.shape[1]:
        raise ValueError(f"ID heatmaps have {id_hm.shape[1]} channels, OOD heatmaps {ood_hm.shape[1]}.")
    channels = rows[0][2].shape[0]

    fig = Figure(figsize=(8.0, 2.5 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for i, (group, img, hm) in enumerate(rows):
        rgb, shown = _as_rgb(img), display_map(hm, channel)
        height, width = rgb.shape[:2]
        vmax = max(float(shown.max()), 1e-12)
        ax_img, ax_hm, ax_ov = axes[i]
        ax_img.imshow(rgb)
        grid = ax_hm.imshow(shown, cmap="inferno", interpolation="nearest", vmin=0.0, vmax=vmax)
        fig.colorbar(grid, ax=ax_hm, fraction=0.046, pad=0.04)
        ax_ov.imshow(rgb)
        extent = overlay_extent(width, height, input_size)
        ax_ov.imshow(shown, cmap="jet", alpha=0.5, interpolation="nearest", extent=extent, vmin=0.0, vmax=vmax)
        left, right, bottom, top = extent
        ax_ov.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="white",
                                  linewidth=1.0))
        ax_ov.set_xlim(-0.5, width - 0.5)
        ax_ov.set_ylim(height - 0.5, -0.5)
        label = group if titles is None else f"{group}\n{titles[i]}"
        ax_img.set_ylabel(label, fontsize=9, color="tab:blue" if group == "ID" else "tab:red")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image", fontsize=9)
    axes[0][1].set_title("heatmap" + channel_note(channels, channel), fontsize=9)
    axes[0][2].set_title("overlay on the model's crop", fontsize=9)
    fig.tight_layout()
    return fig


def plot_heatmap_gallery(
    id_images: Sequence[ImageLike],
    id_heatmaps: np.ndarray | None,
    ood_images: Sequence[ImageLike],
    ood_heatmaps: np.ndarray | None,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    *,
    input_size: Sequence[int],
    channel: int | None = None,
) -> Path:
    """Save `draw_heatmap_gallery(...)` (image | heatmap | overlay on the model's crop, one row per image,
    ID first) as a PNG at `path` (parent folders are created); returns `path`.

    Args:
        id_images, ood_images: PIL images or HxWx3 uint8 arrays, as the loader gives them.
        id_heatmaps, ood_heatmaps: (n, h, w) or (n, C, h, w) arrays, one per image in the same order.
        titles: optional one title per image, ID images first then OOD.
        input_size: the model's input (H, W) in pixels, which fixes the crop the overlay covers.
        channel: which channel of multi-channel heatmaps to show; None = the channel mean.
    """
    fig = draw_heatmap_gallery(id_images, id_heatmaps, ood_images, ood_heatmaps, input_size, titles, channel)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format="png")
    return out
