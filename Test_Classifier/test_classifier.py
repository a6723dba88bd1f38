"""Stage 2: test the classifier; write heatmaps, logits, features and baseline OOD scores.

    python Test_Classifier/test_classifier.py [--config cifar10] [heatmap.kind=rollout ...]
"""
from pathlib import Path

from wildcapture.cli import stage_main

if __name__ == "__main__":
    stage_main(Path(__file__).resolve().parent / "config", __doc__, "wildcapture.stages.evaluate_classifier")
