"""The settings groups that the front (service/settings.py) and the worker (worker/settings.py)
share, declared once (core/config.py): which model and how its versions are chosen, where the
backend runs, and the image checks. A program's settings inherit them, so that `--model-base`,
`DERMSERVE_BACKEND_TIMEOUT_S` or `--max-image-bytes` mean the same in every process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dermserve.core import defaults
from dermserve.core.config import group, parse_labels, setting, show_default
from dermserve.core.image.limits import ImageLimits

BACKENDS = ("embedded", "tfserving")


@dataclass(frozen=True)
class ModelSettings:
    """Which model answers, and which of its versions."""

    model_base: Path = setting(Path(defaults.DEFAULT_MODEL_BASE),
                               help="embedded: model base directory (NAME/VERSION/ inside)")
    model_name: str = setting(defaults.DEFAULT_MODEL_NAME, help="model name")
    poll_interval_s: float = setting(defaults.DEFAULT_POLL_INTERVAL_S,
                                     help="embedded: rescan period of the model base")
    version_labels: Mapping[str, int] = setting(
        factory=dict, parse=parse_labels, show=show_default,
        help="embedded: labels, e.g. stable=3,canary=4")
    default_version_label: str = setting(
        "", help="label answering calls and jobs that pin nothing, e.g. stable "
                 "(empty: the latest version)")
    warm_up_max_batch: int = setting(
        0, unit="images",
        help="embedded: warm each version up at every batch size up to this before it answers "
             "(0: the largest batch this process sends; 1: one image, the quickest start)")
    freeze_graph: bool = setting(
        defaults.DEFAULT_FREEZE_GRAPH,
        help="embedded: serve each version's graph with its variables folded into constants "
             "(about 2x faster on the CPU; false: as the SavedModel stores them)")
    min_confidence_floor: float = setting(
        defaults.DEFAULT_MIN_CONFIDENCE_FLOOR, unit="probability",
        help="abstain below this top probability, whatever the version says")


@dataclass(frozen=True)
class BackendSettings:
    """Where the model runs: in this process, or in TF Serving."""

    backend: str = setting(defaults.DEFAULT_BACKEND, choices=BACKENDS, help="model backend")
    tfserving_target: str = setting(defaults.DEFAULT_TFSERVING_TARGET,
                                    help="tfserving: host:port")
    tfserving_ca: Path | None = setting(
        None, help="tfserving: CA (PEM) of TF Serving's certificate; enables TLS to it "
                   "(empty: plaintext)")
    backend_timeout_s: float = setting(
        defaults.DEFAULT_BACKEND_TIMEOUT_S,
        help="cap on one backend call when its caller sets no deadline")
    backend_max_retries: int = setting(defaults.DEFAULT_BACKEND_MAX_RETRIES, unit="retries",
                                       help="tfserving: retries of a call on UNAVAILABLE")
    intra_op_threads: int = setting(
        defaults.DEFAULT_INTRA_OP_THREADS, unit="threads",
        help="embedded: threads TensorFlow splits one op over (0: one per core)")
    inter_op_threads: int = setting(
        defaults.DEFAULT_INTER_OP_THREADS, unit="threads",
        help="embedded: ops TensorFlow runs at once (0: one per core)")


@dataclass(frozen=True)
class ServingSettings(ModelSettings, BackendSettings):
    """Everything it takes to classify an image: the model, the backend, the image checks."""

    limits: ImageLimits = group(ImageLimits)
    decode_pixel_budget: int = setting(
        defaults.DEFAULT_DECODE_PIXEL_BUDGET, unit="pixels",
        help="pixels decoded at once across calls (memory bound)")

    @property
    def image_limits(self) -> ImageLimits:
        return self.limits
