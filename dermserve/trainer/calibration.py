"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on validation logits by NLL.

The fitted T goes into the version's config and into the graph (`softmax(logits / T)`), so that
served probabilities are the calibrated ones. Numpy only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from dermserve.trainer.metrics import DEFAULT_ECE_BINS, expected_calibration_error

logger = logging.getLogger(__name__)

TEMPERATURE_RANGE = (0.05, 20.0)
"""Search bounds for T: wide enough for any sane network, narrow enough to stay finite."""
SEARCH_TOLERANCE = 1e-4  # in log T: ~0.01% of T, far below what ECE can resolve
GOLDEN = (math.sqrt(5) - 1) / 2


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, computed stably in float64."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean NLL of the true classes under softmax(logits / T)."""
    scaled = np.asarray(logits, np.float64) / temperature
    peak = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - peak).sum(axis=1)) + peak[:, 0]
    return float(np.mean(log_norm - scaled[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimising validation NLL, by golden-section search on log T. The NLL is convex in
    1/T, so it is unimodal in log T and the search cannot get stuck."""
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, y, math.exp(log_t))

    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > SEARCH_TOLERANCE:
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - GOLDEN * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + GOLDEN * (high - low)
            loss_b = loss(b)
    return math.exp((low + high) / 2)


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted temperature and what it did on the validation split."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def calibrate(logits: np.ndarray, y: np.ndarray,
              bins: int = DEFAULT_ECE_BINS) -> CalibrationResult:
    """Fit T on (validation) logits and measure NLL and ECE before and after."""
    temperature = fit_temperature(logits, y)
    result = CalibrationResult(
        temperature=temperature,
        nll_before=negative_log_likelihood(logits, y, 1.0),
        nll_after=negative_log_likelihood(logits, y, temperature),
        ece_before=expected_calibration_error(y, softmax(logits), bins),
        ece_after=expected_calibration_error(y, softmax(logits, temperature), bins))
    logger.info("temperature %.3f: validation ECE %.4f -> %.4f, NLL %.4f -> %.4f", temperature,
                result.ece_before, result.ece_after, result.nll_before, result.nll_after)
    return result
