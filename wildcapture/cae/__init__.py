"""The convolutional autoencoder over attention heatmaps: models, data, training and scoring."""
from wildcapture.cae.architectures import ARCHITECTURES, build_cae
from wildcapture.cae.engine import (
    ood_threshold,
    unknown_confidence,
    reconstruct,
    reconstruction_errors,
    train_one_epoch,
)
from wildcapture.cae.heatmap_data import (
    NORMS,
    HeatmapPrep,
    RESIZE_MODES,
    HeatmapFile,
    epoch_batches,
    iterate_batches,
    load_heatmaps,
    prepare_heatmaps,
)
from wildcapture.cae.model import ConvAutoencoder
from wildcapture.cae.small_model import SmallAutoencoder

__all__ = [
    "ARCHITECTURES",
    "ConvAutoencoder",
    "HeatmapPrep",
    "NORMS",
    "RESIZE_MODES",
    "SmallAutoencoder",
    "build_cae",
    "HeatmapFile",
    "epoch_batches",
    "iterate_batches",
    "load_heatmaps",
    "ood_threshold",
    "unknown_confidence",
    "prepare_heatmaps",
    "reconstruct",
    "reconstruction_errors",
    "train_one_epoch",
]
