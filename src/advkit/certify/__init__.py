"""Certified robustness: randomized smoothing (and, later, the training methods that raise it)."""
