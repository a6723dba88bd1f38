"""Stage 1: train the ViT classifier on the in-distribution classes.

    python Train_Vit_Classifier/train.py [--config cifar10] [train.epochs=5 ...]
    torchrun --nproc_per_node=2 Train_Vit_Classifier/train.py ...   # DDP, same script
"""
from pathlib import Path

from wildcapture.cli import stage_main

if __name__ == "__main__":
    stage_main(Path(__file__).resolve().parent / "config", __doc__, "wildcapture.stages.train_classifier")
