"""The core carries patient context to a version that takes it, merges a DICOM file's tags
under the request's own values, and leaves a version without context inputs unchanged."""

from __future__ import annotations

import pytest

from dermserve.core.backends.base import Backend, ModelRef
from dermserve.core.classifier import Classifier
from dermserve.core.context import NO_CONTEXT, PatientContext, Sex, patient_context
from dermserve.core.image.limits import ImageLimits
from dermserve.core.prediction import Prediction
from devtools.dicom_sample import to_bytes
from tests.conftest import TINY_MODEL_NAME
from tests.context_models import received
from tests.dicom_files import dicom_dataset, ham_image
from tests.service.conftest import good_jpeg

CONTEXT_VERSION = ModelRef(TINY_MODEL_NAME, version=3)
PLAIN_VERSION = ModelRef(TINY_MODEL_NAME, version=2)


@pytest.fixture
def classifier(context_backend: Backend) -> Classifier:
    return Classifier(context_backend, TINY_MODEL_NAME, ImageLimits())


def probabilities(prediction: Prediction) -> dict[str, float]:
    return {item.label: item.probability for item in prediction.probabilities}


def test_each_image_of_a_call_carries_its_own_context(classifier: Classifier) -> None:
    contexts = [patient_context(45, "male", "trunk"), None, patient_context(site="face")]
    answers = classifier.classify_many([good_jpeg()] * 3, CONTEXT_VERSION, None, 10.0, contexts)
    assert all(isinstance(answer, Prediction) for answer in answers)
    read = [received(probabilities(answer)) for answer in answers
            if isinstance(answer, Prediction)]
    assert read == [(45.0, 2, 19), (-1.0, 0, 0), (-1.0, 0, 7)]
    assert [answer.context_used for answer in answers
            if isinstance(answer, Prediction)] == [True, False, True]


def test_a_version_without_context_inputs_answers_as_before(classifier: Classifier) -> None:
    plain = classifier.classify(good_jpeg(), PLAIN_VERSION, timeout=10.0)
    given = classifier.classify(good_jpeg(), PLAIN_VERSION, timeout=10.0,
                                context=patient_context(80, "female", "back"))
    assert given.probabilities == plain.probabilities
    assert not given.context_used and not plain.context_used


def dicom_with(**tags: str) -> bytes:
    dataset = dicom_dataset(ham_image())
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    return to_bytes(dataset)


def test_a_dicom_files_tags_are_its_context(classifier: Classifier) -> None:
    image = dicom_with(PatientAge="045Y", PatientSex="F", BodyPartExamined="UPPER_EXTREMITY")
    answer = classifier.classify(image, CONTEXT_VERSION, timeout=10.0)
    assert received(probabilities(answer)) == (45.0, 1, 20) and answer.context_used
    months = classifier.classify(dicom_with(PatientAge="006M"), CONTEXT_VERSION, timeout=10.0)
    assert received(probabilities(months)) == (0.5, 0, 0)


def test_the_requests_fields_override_the_files_one_by_one(classifier: Classifier) -> None:
    image = dicom_with(PatientAge="045Y", PatientSex="F", BodyPartExamined="BACK")
    answer = classifier.classify(image, CONTEXT_VERSION, timeout=10.0,
                                 context=PatientContext(age_years=60.0, sex=Sex.MALE))
    assert received(probabilities(answer)) == (60.0, 2, 4)


def test_a_files_malformed_tags_are_dropped_not_refused(classifier: Classifier) -> None:
    image = dicom_with(PatientAge="45", PatientSex="O", BodyPartExamined="ELBOW")
    answer = classifier.classify(image, CONTEXT_VERSION, timeout=10.0)
    assert received(probabilities(answer)) == (-1.0, 0, 0) and not answer.context_used
    assert classifier.classify(image, CONTEXT_VERSION, timeout=10.0,
                               context=NO_CONTEXT).top_label == answer.top_label
