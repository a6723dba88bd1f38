"""Stage 3: train the convolutional autoencoder on the ID attention heatmaps.

    python AutoEncoder/train.py [--config cifar10] [train.epochs=50 ...]
"""
from pathlib import Path

from wildcapture.cli import stage_main

if __name__ == "__main__":
    stage_main(Path(__file__).resolve().parent / "config", __doc__, "wildcapture.stages.train_cae")
