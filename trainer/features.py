"""Feature statistics for the out-of-distribution score (numpy; the graph side is in export.py).

The OOD score of an image is the Mahalanobis distance of its pooled features to the nearest class
mean, under one covariance shared by the classes (Lee et al., 2018). MobileNetV2 pools 1280
features; a 1280x1280 precision matrix would weigh 6.5 MB in every version, so the features are
first projected onto the top principal components of the training features.
"""

from __future__ import annotations

import numpy as np

DEFAULT_OOD_COMPONENTS = 128
"""Principal components kept: 128 x 1280 float32 is 0.6 MB, and the top components of a
fine-tuned network carry most of the class structure."""
DEFAULT_SHRINKAGE = 0.1
"""Shrinkage of the covariance towards a scaled identity: keeps it invertible and well-conditioned
when classes such as df have only ~100 training images."""


def principal_components(features: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """(centre [D], projection [D, P]) of the top `components` principal directions."""
    centre = features.mean(axis=0)
    _, _, right = np.linalg.svd(features - centre, full_matrices=False)
    count = max(1, min(components, right.shape[0]))
    return centre, right[:count].T


class FeatureStatistics:
    """Optional PCA (`centre`, `projection`), class means and a shared precision matrix in the
    projected space. Without a projection the features are used as they are."""

    def __init__(self, class_means: np.ndarray, precision: np.ndarray,
                 centre: np.ndarray | None = None, projection: np.ndarray | None = None) -> None:
        self.class_means = np.asarray(class_means, np.float32)
        self.precision = np.asarray(precision, np.float32)
        self.centre = None if centre is None else np.asarray(centre, np.float32)
        self.projection = None if projection is None else np.asarray(projection, np.float32)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int,
            shrinkage: float = DEFAULT_SHRINKAGE,
            components: int | None = None) -> FeatureStatistics:
        """Fit class means and a shrunk shared covariance, after PCA to `components` dims when
        given (and smaller than the feature size)."""
        features = np.asarray(features, np.float64)
        labels = np.asarray(labels)
        centre = projection = None
        if components is not None and components < features.shape[1]:
            centre, projection = principal_components(features, components)
            features = (features - centre) @ projection
        means = np.stack([features[labels == k].mean(axis=0) if np.any(labels == k)
                          else features.mean(axis=0) for k in range(num_classes)])
        centred = features - means[labels]
        cov = centred.T @ centred / max(1, len(features) - 1)
        target = np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        cov = (1 - shrinkage) * cov + shrinkage * target
        return cls(means, np.linalg.inv(cov), centre, projection)

    def project(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float64)
        if self.projection is None or self.centre is None:
            return features
        return np.asarray((features - self.centre) @ self.projection)

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """The graph's `ood_score` in numpy (float64): min_k Mahalanobis distance."""
        projected = self.project(features)
        precision = self.precision.astype(np.float64)
        distances = np.stack([np.einsum("nd,de,ne->n", projected - mean, precision,
                                        projected - mean)
                              for mean in self.class_means.astype(np.float64)], axis=1)
        return np.asarray(np.sqrt(np.maximum(distances.min(axis=1), 0.0)))

    @property
    def size_bytes(self) -> int:
        arrays = (self.class_means, self.precision, self.centre, self.projection)
        return sum(array.nbytes for array in arrays if array is not None)
