"""Heatmap outputs of stage 2: PNG export and the gallery plot (the heatmaps themselves: `wildcapture.attention`)."""
