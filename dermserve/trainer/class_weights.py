"""Class weights against HAM10000's imbalance (nv is 67% of the images, df about 1%)."""

from __future__ import annotations

import numpy as np


def balanced_class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """`n / (K * n_k)` per class (sklearn's "balanced"): each class then weighs as much in the
    loss as it would with equal counts. A class absent from `y` gets weight 0."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = len(y) / (num_classes * counts[present])
    return weights


def sample_weights(y: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Each example's weight: its class's weight."""
    return np.asarray(class_weights, dtype=np.float64)[np.asarray(y, dtype=np.int64)]
