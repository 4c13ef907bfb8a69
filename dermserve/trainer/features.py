"""Feature statistics for the out-of-distribution score (numpy; the graph side is in export.py).

The OOD score of an image is the Mahalanobis distance of its pooled features to the nearest class
mean, under one covariance shared by the classes (Lee et al., 2018). MobileNetV2 pools 1280
features; a 1280x1280 precision matrix would weigh 6.5 MB in every version, so the covariance is
approximated as in probabilistic PCA: full within the top principal components of the training
features, isotropic (one residual variance) outside them. The squared score is then
    min_k (p - m_k)^T P (p - m_k)  +  |residual|^2 / residual_variance
where p is the projection of f - centre and the residual is the part of f - centre outside the
subspace. Without the residual term an image far off the lesion manifold (a cat) can project
close to a class mean: on ImageNet MobileNetV2 features the subspace-only score missed both
sanity photos, the residual term caught them (measured while building this module).
"""

from __future__ import annotations

import numpy as np

DEFAULT_OOD_COMPONENTS = 128
"""Principal components kept: 128 x 1280 float32 is 0.6 MB, and the top components of a
fine-tuned network carry most of the class structure."""
MIN_EXAMPLES_PER_COMPONENT = 4
"""Fewer components when there are fewer examples than this per component (small test sets)."""
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
                 centre: np.ndarray | None = None, projection: np.ndarray | None = None,
                 residual_variance: float | None = None) -> None:
        self.class_means = np.asarray(class_means, np.float32)
        self.precision = np.asarray(precision, np.float32)
        self.centre = None if centre is None else np.asarray(centre, np.float32)
        self.projection = None if projection is None else np.asarray(projection, np.float32)
        self.residual_variance = residual_variance

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int,
            shrinkage: float = DEFAULT_SHRINKAGE,
            components: int | None = None) -> FeatureStatistics:
        """Fit class means and a shrunk shared covariance, after PCA to `components` dims when
        given (and smaller than the feature size)."""
        features = np.asarray(features, np.float64)
        labels = np.asarray(labels)
        centre = projection = residual_variance = None
        if components is not None:
            # with few examples the top components fit the training points themselves, and their
            # residual variance (which new images are judged by) comes out near zero
            components = min(components, max(1, len(features) // MIN_EXAMPLES_PER_COMPONENT))
        if components is not None and components < features.shape[1]:
            centre, projection = principal_components(features, components)
            residual_variance = _residual_variance(features, labels, num_classes, projection)
            features = (features - centre) @ projection
        means = _class_means(features, labels, num_classes)
        centred = features - means[labels]
        cov = centred.T @ centred / max(1, len(features) - 1)
        target = np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        cov = (1 - shrinkage) * cov + shrinkage * target
        return cls(means, np.linalg.inv(cov), centre, projection, residual_variance)

    def project(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float64)
        if self.projection is None or self.centre is None:
            return features
        return np.asarray((features - self.centre) @ self.projection)

    def residual_term(self, features: np.ndarray) -> np.ndarray:
        """|part of f - centre outside the subspace|^2 / residual variance (0 without PCA)."""
        if self.projection is None or self.centre is None or not self.residual_variance:
            return np.zeros(len(features))
        centred = np.asarray(features, np.float64) - self.centre
        projected = centred @ self.projection
        residual = (centred ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
        return np.asarray(np.maximum(residual, 0.0) / self.residual_variance)

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """The graph's `ood_score` in numpy (float64); see the module docstring."""
        projected = self.project(features)
        precision = self.precision.astype(np.float64)
        distances = np.stack([np.einsum("nd,de,ne->n", projected - mean, precision,
                                        projected - mean)
                              for mean in self.class_means.astype(np.float64)], axis=1)
        squared = distances.min(axis=1) + self.residual_term(features)
        return np.asarray(np.sqrt(np.maximum(squared, 0.0)))

    @property
    def size_bytes(self) -> int:
        arrays = (self.class_means, self.precision, self.centre, self.projection)
        return sum(array.nbytes for array in arrays if array is not None)


def _class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's mean feature (the overall mean for a class without examples)."""
    return np.stack([features[labels == k].mean(axis=0) if np.any(labels == k)
                     else features.mean(axis=0) for k in range(num_classes)])


def _residual_variance(features: np.ndarray, labels: np.ndarray, num_classes: int,
                       projection: np.ndarray) -> float:
    """Mean within-class variance per dimension outside the subspace (PPCA's sigma^2)."""
    within = features - _class_means(features, labels, num_classes)[labels]
    residual = within - (within @ projection) @ projection.T
    dimensions = max(1, features.shape[1] - projection.shape[1])
    return max(float((residual ** 2).sum(axis=1).mean() / dimensions), 1e-12)
