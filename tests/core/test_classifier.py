"""The grpc-free core the servicer and the batch worker share."""

from __future__ import annotations

import numpy as np
import pytest

from dermserve.core.backends.base import BatchOutput, ExplainOutput, ModelRef
from dermserve.core.classifier import Classifier
from dermserve.core.context import ContextBatch
from dermserve.core.errors import BackendUnavailable, InvalidImage, ModelNotFound
from dermserve.core.image.limits import ImageLimits
from dermserve.core.prediction import Prediction
from tests.service.conftest import FakeBackend, good_jpeg


class VanishingBackend(FakeBackend):
    """Hot reload in slow motion: the version `resolve` names is gone when `predict` comes,
    `vanish` times."""

    def __init__(self, vanish: int) -> None:
        super().__init__(versions=(1, 2))
        self.vanish = vanish

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: ContextBatch | None = None) -> BatchOutput:
        self._maybe_vanish(ref)
        return super().predict(ref, images, timeout, context)

    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None,
                context: ContextBatch | None = None) -> ExplainOutput:
        self._maybe_vanish(ref)
        answer = super().predict(ref, images, timeout)  # a flat map: only the retry matters here
        return ExplainOutput(answer.version, answer.probabilities, answer.ood_scores,
                             np.ones((len(images), 2, 2), np.float32),
                             answer.probabilities.argmax(axis=1).astype(np.int32))

    def _maybe_vanish(self, ref: ModelRef) -> None:
        if self.vanish > 0 and ref.version == max(self.versions):
            self.vanish -= 1
            self.versions[max(self.versions) + 1] = self.versions[max(self.versions)]
            del self.versions[ref.version]
            raise ModelNotFound(f"version {ref.version} was unloaded")


def classifier(backend: FakeBackend) -> Classifier:
    return Classifier(backend, "ham10000", ImageLimits())


def test_a_version_unloaded_between_resolve_and_predict_is_resolved_again() -> None:
    backend = VanishingBackend(vanish=1)
    prediction = classifier(backend).classify(good_jpeg(), request_id="r")
    assert prediction.model_version == 3


def test_only_one_retry_and_never_for_a_pinned_version() -> None:
    with pytest.raises(ModelNotFound):
        classifier(VanishingBackend(vanish=2)).classify(good_jpeg())
    with pytest.raises(ModelNotFound):
        classifier(VanishingBackend(vanish=1)).classify(good_jpeg(), ModelRef("ham10000", 2))


def test_explain_resolves_an_unloaded_version_again_like_classify() -> None:
    explanation = classifier(VanishingBackend(vanish=1)).explain(good_jpeg(), request_id="r")
    assert explanation.prediction.model_version == 3
    with pytest.raises(ModelNotFound):
        classifier(VanishingBackend(vanish=2)).explain(good_jpeg())
    with pytest.raises(ModelNotFound):
        classifier(VanishingBackend(vanish=1)).explain(good_jpeg(), ref=ModelRef("ham10000", 2))


def test_classify_many_returns_validation_errors_in_place() -> None:
    backend = FakeBackend()
    results = classifier(backend).classify_many(
        [good_jpeg(), b"", good_jpeg(), b"GIF89a"], request_ids=["a", "b", "c", "d"])
    assert [type(r).__name__ for r in results] == ["Prediction", "InvalidImage", "Prediction",
                                                    "InvalidImage"]
    first, third = results[0], results[2]
    assert isinstance(first, Prediction) and isinstance(third, Prediction)
    assert (first.request_id, third.request_id) == ("a", "c")
    assert isinstance(results[1], InvalidImage) and results[1].reason == "EMPTY_IMAGE"
    assert backend.batch_sizes == [2]  # the valid images went to the model in one call


def test_classify_many_raises_backend_errors() -> None:
    backend = FakeBackend()
    backend.up = False
    with pytest.raises(BackendUnavailable):
        classifier(backend).classify_many([good_jpeg()])
    assert classifier(FakeBackend()).classify_many([b""])[0].reason == "EMPTY_IMAGE"  # type: ignore[union-attr]


def test_confidence_floor_makes_the_classifier_abstain() -> None:
    cautious = Classifier(FakeBackend(), "ham10000", ImageLimits(), min_confidence_floor=0.9)
    prediction = cautious.classify(good_jpeg())
    assert prediction.abstained and prediction.abstention.value == "LOW_CONFIDENCE"
    assert not classifier(FakeBackend()).classify(good_jpeg()).abstained


def test_pixel_budget_bounds_decoding_in_flight() -> None:
    from dermserve.core.errors import ResourceExhausted
    from dermserve.core.image.decoding import PixelBudget

    budget = PixelBudget(max_pixels=50_000)
    cautious = Classifier(FakeBackend(), "ham10000", ImageLimits(), decode_budget=budget)
    with budget.hold(40_000, timeout=1):  # another call is decoding a large image
        with pytest.raises(ResourceExhausted) as caught:
            cautious.classify(good_jpeg(), timeout=0.2)  # 200x150 = 30,000 pixels: no room
        assert caught.value.reason == "DECODE_BUSY"
    assert budget.in_use == 0
    assert cautious.classify(good_jpeg(), timeout=5).model_version == 2
    with budget.hold(10**9, timeout=1):  # larger than the budget: it may still go alone
        assert budget.in_use == 50_000


def test_default_version_label_answers_unpinned_calls_and_pins_still_win() -> None:
    backend = FakeBackend(versions=(1, 2))
    backend.labels["stable"] = 1
    stable_first = Classifier(backend, "ham10000", ImageLimits(), default_version_label="stable")
    assert stable_first.classify(good_jpeg()).model_version == 1
    assert stable_first.classify(good_jpeg(), ModelRef("ham10000", version=2)).model_version == 2
    assert classifier(backend).classify(good_jpeg()).model_version == 2  # no default: latest
