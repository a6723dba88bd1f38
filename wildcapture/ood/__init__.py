"""OOD evaluation: the detector contract and the detectors, metrics, the results table and plots.

Conventions: every score is higher = more OOD; metrics take OOD as the positive class.
"""
