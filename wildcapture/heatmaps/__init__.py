"""CLS-attention heatmaps: extraction from a timm ViT (`attention`, with the kind registry), PNG export, a gallery."""
