"""OOD evaluation: the post-hoc detectors and their registry, the fusion, metrics, the results table and plots.

Conventions: every score is higher = more OOD; metrics take OOD as the positive class. The detector contract
is `wildcapture.detector`.
"""
