"""The ViT classifier: sampling, the train/eval loops and the data set-up stages 1 and 2 share."""
