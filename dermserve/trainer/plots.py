"""PNG figures for the data and evaluation reports.

Uses matplotlib's object API (`Figure` + its Agg canvas) rather than pyplot: no global figure state
and no display backend, so it runs the same on a headless trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dermserve.trainer.metrics import Reliability

FIGURE_DPI = 110  # small PNGs (~30-60 kB) that still read well in a Markdown viewer


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=FIGURE_DPI)
    return path


def grouped_bars(path: Path, title: str, categories: Sequence[str],
                 series: Mapping[str, Sequence[float]], ylabel: str) -> Path:
    """One group of bars per category, one bar per series (e.g. per split)."""
    figure = Figure(figsize=(min(12.0, max(6.0, 0.3 * len(categories) * max(1, len(series)))), 4.0))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(categories))
    for n, (name, values) in enumerate(series.items()):
        axes.bar(positions + n * width, values, width, label=name)
    axes.set_xticks(positions + width * (len(series) - 1) / 2, categories, rotation=45, ha="right")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    return _save(figure, path)


def confusion_matrix_plot(path: Path, matrix: np.ndarray, labels: Sequence[str]) -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) with the counts written in."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(6.0, 5.2))
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if rates[row, column] > 0.5 else "black", fontsize=8)
    axes.set_title("Confusion matrix (held-out test)")
    return _save(figure, path)


def roc_plot(path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> Path:
    """One-vs-rest ROC curves; `curves` maps a label to (fpr, tpr, auc)."""
    figure = Figure(figsize=(5.5, 5.0))
    axes = figure.add_subplot()
    for label, (fpr, tpr, auc) in curves.items():
        axes.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel("true-positive rate")
    axes.set_title("One-vs-rest ROC (held-out test)")
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def reliability_plot(path: Path, tables: Mapping[str, Reliability], title: str) -> Path:
    """Accuracy against confidence per bin, one line per table (e.g. before/after scaling)."""
    figure = Figure(figsize=(5.0, 5.0))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, table in tables.items():
        used = table.count > 0
        axes.plot(table.confidence[used], table.accuracy[used], marker="o", label=name)
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def histogram_plot(path: Path, title: str, series: Mapping[str, np.ndarray],
                   threshold: float | None, xlabel: str) -> Path:
    """Overlaid histograms (e.g. OOD scores per group) with an optional threshold line."""
    figure = Figure(figsize=(6.0, 4.0))
    axes = figure.add_subplot()
    finite = [values[np.isfinite(values)] for values in series.values()]
    edges = np.histogram_bin_edges(np.concatenate(finite) if finite else np.zeros(1), bins=40)
    for (name, _), values in zip(series.items(), finite, strict=True):
        axes.hist(values, bins=edges.tolist(), alpha=0.5, density=True, label=name)
    if threshold is not None:
        axes.axvline(threshold, color="red", linestyle="--", label="threshold")
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return _save(figure, path)
