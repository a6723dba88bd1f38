"""detect.py's library: score the animals of new images (a folder or MegaDetector's boxes) with a trained
classifier + CAE, streaming, resumable and sharded under torchrun (entry point: `run.detect`)."""

# What a run's `ood_score` is: the CAE's reconstruction error, or the fusion detector stage 3 stored
# (`wildcapture.ood.fusion`); and where JPEGs are decoded (`gpu_decode`). Torch-free, for detect.py's --help.
SCORES = ("cae", "fusion")
DECODES = ("cpu", "gpu")
