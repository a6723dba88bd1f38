"""detect.py's library: score the animals of new images (a folder or MegaDetector's boxes) with a trained
classifier + CAE, streaming, resumable and sharded under torchrun (entry point: `run.detect`)."""
