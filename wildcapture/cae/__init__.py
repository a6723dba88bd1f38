"""The convolutional autoencoder over attention heatmaps: model, data, training and scoring."""
from wildcapture.cae.engine import (
    ood_threshold,
    reconstruct,
    reconstruction_errors,
    train_one_epoch,
)
from wildcapture.cae.heatmap_data import (
    NORMS,
    HeatmapPrep,
    RESIZE_MODES,
    iterate_batches,
    load_heatmaps,
    prepare_heatmaps,
)
from wildcapture.cae.model import ConvAutoencoder

__all__ = [
    "ConvAutoencoder",
    "HeatmapPrep",
    "NORMS",
    "RESIZE_MODES",
    "iterate_batches",
    "load_heatmaps",
    "ood_threshold",
    "prepare_heatmaps",
    "reconstruct",
    "reconstruction_errors",
    "train_one_epoch",
]
