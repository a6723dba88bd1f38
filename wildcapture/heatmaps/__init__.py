"""CLS-attention heatmaps: extraction from a timm ViT, PNG export, and a gallery plot."""
from .attention import HEATMAP_KINDS, forward_with_heatmaps, heatmap_channels
from .export import export_heatmap_pngs, read_heatmap_pngs
from .gallery import plot_heatmap_gallery

__all__ = [
    "HEATMAP_KINDS",
    "heatmap_channels",
    "forward_with_heatmaps",
    "export_heatmap_pngs",
    "read_heatmap_pngs",
    "plot_heatmap_gallery",
]
