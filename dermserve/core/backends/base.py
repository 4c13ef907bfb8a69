"""The interface every model backend implements. grpc-free, so the classifier core, the batch
worker and the tests can use any backend (or a small fake) interchangeably."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dermserve.core.context import ContextBatch
from dermserve.core.errors import InternalError
from dermserve.core.model_config import (
    CLASS_INDEX_OUTPUT,
    HEATMAP_OUTPUT,
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    ModelConfig,
)


@dataclass(frozen=True)
class ModelRef:
    """Which model version a caller wants: the latest (neither set), a pinned version number,
    or a version label such as "stable" or "canary"."""

    name: str
    version: int | None = None
    label: str | None = None

    def describe(self) -> str:
        if self.version is not None:
            return f"{self.name} version {self.version}"
        if self.label:
            return f"{self.name} label {self.label!r}"
        return f"{self.name} (latest)"


class VersionState(enum.Enum):
    """TF Serving's ModelVersionStatus states, which the embedded backend mirrors."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


def load_failure(reason: str, log: str = "the server log") -> str:
    """What a client is told of a version that failed to load (VersionInfo.error): a stable
    reason only. The loader's message names server paths and quotes TensorFlow; `log` has it."""
    return f"cannot load this version ({reason}); the details are in {log}"


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model as a backend sees it; `config` is None until it has loaded."""

    name: str
    version: int
    state: VersionState
    config: ModelConfig | None = None
    labels_assigned: tuple[str, ...] = ()
    error: str = ""  # shown to clients (ListModels): a reason, never paths or exception text
    takes_context: bool = False  # its serving_default has the context inputs (core/context.py)
    explain_takes_context: bool = False  # so has its explain signature


@dataclass(frozen=True)
class BatchOutput:
    """What a backend returns for a batch of preprocessed images, and which version made it."""

    version: VersionInfo
    probabilities: np.ndarray  # [N, K] float32, calibrated, columns in version.config.labels order
    ood_scores: np.ndarray  # [N] float32, higher = less like the training data


@dataclass(frozen=True)
class ExplainOutput(BatchOutput):
    """A batch's predictions (as `predict` answers them) and a Grad-CAM heatmap per image."""

    heatmaps: np.ndarray  # [N, h, w] float32 in [0, 1], the last feature map's resolution
    class_indices: np.ndarray  # [N] int32: the class each heatmap explains


def explain_output(version: VersionInfo, outputs: Mapping[str, np.ndarray]) -> ExplainOutput:
    """The `explain` signature's outputs as an ExplainOutput, their shapes checked (whichever
    backend ran it, a malformed answer is the server's fault, not the caller's)."""
    try:
        probabilities = np.asarray(outputs[PROBABILITIES_OUTPUT], np.float32)
        ood_scores = np.asarray(outputs[OOD_OUTPUT], np.float32)
        heatmaps = np.asarray(outputs[HEATMAP_OUTPUT], np.float32)
        class_indices = np.asarray(outputs[CLASS_INDEX_OUTPUT], np.int32)
    except KeyError as exc:
        raise InternalError(f"the explain answer lacks output {exc}") from exc
    count = len(probabilities)
    if (probabilities.ndim != 2 or ood_scores.shape != (count,) or heatmaps.ndim != 3
            or len(heatmaps) != count or class_indices.shape != (count,)):
        raise InternalError(f"explain answered shapes {probabilities.shape}, {ood_scores.shape}, "
                            f"{heatmaps.shape} and {class_indices.shape}")
    return ExplainOutput(version, probabilities, ood_scores, heatmaps, class_indices)


class Backend(Protocol):
    """A source of model versions and predictions. Raise only core.errors types."""

    def resolve(self, ref: ModelRef, timeout: float | None = None) -> VersionInfo:
        """The AVAILABLE version `ref` names now (its config tells how to preprocess)."""
        ...

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: ContextBatch | None = None) -> BatchOutput:
        """Classify `images` ([N, H, W, 3] uint8, already preprocessed for that version) with
        their patient context, one row per image: a version that takes context gets it (the
        neutral rows when None), a version that does not never sees it."""
        ...

    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None,
                context: ContextBatch | None = None) -> ExplainOutput:
        """Predict and explain `images` through the version's `explain` signature: the class
        `class_indices[i]` of each image (-1: its top class), with their context rows where the
        signature takes them (as predict). ExplanationUnsupported when the version has no such
        signature."""
        ...

    def list_versions(self, name: str, timeout: float | None = None) -> list[VersionInfo]:
        """Every version of `name` the backend knows, in any state, newest first."""
        ...

    def close(self) -> None:
        """Release threads, channels and loaded models."""
        ...
