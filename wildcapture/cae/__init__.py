"""The convolutional autoencoder over attention heatmaps: architectures, data, training and scoring."""
