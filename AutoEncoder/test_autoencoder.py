"""Stage 4: score test images by CAE reconstruction error; write the OOD table and plots.

    python AutoEncoder/test_autoencoder.py [--config cifar10] [test.checkpoint=PATH ...]
"""
from pathlib import Path

from wildcapture.cli import stage_main

if __name__ == "__main__":
    stage_main(Path(__file__).resolve().parent / "config", __doc__, "wildcapture.stages.score_cae")
