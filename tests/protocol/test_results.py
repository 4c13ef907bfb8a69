"""The proto <-> domain conversions the front and its clients share (dermserve/protocol/): a batch
image's result survives the trip to the wire and back as the job stored it, whether classified,
abstained, a DICOM object or an error, so the CLI writes the same files the job wrote."""

from __future__ import annotations

import pytest

from dermserve.batch.results import ImageError, ImageResult
from dermserve.core.prediction import DicomReference
from dermserve.protocol.results import (
    from_dicom_reference,
    image_result,
    result_message,
    to_dicom_reference,
)
from dermserve.v1 import batch_jobs_pb2 as pb

PROBABILITIES = (("mel", "Melanoma", 0.625), ("nv", "Melanocytic nevus", 0.25),
                 ("bkl", "Benign keratosis", 0.125))
DICOM = DicomReference("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.77.1.4", "XC")

RESULTS = {
    "classified": ImageResult(0, "a.jpg", "ham10000", 3, PROBABILITIES, "NONE", 0.5),
    "low confidence": ImageResult(1, "b.png", "ham10000", 3, PROBABILITIES, "LOW_CONFIDENCE",
                                  0.75),
    "out of distribution": ImageResult(2, "c.jpg", "ham10000", 3, PROBABILITIES,
                                       "OUT_OF_DISTRIBUTION", 0.875),
    "a DICOM object": ImageResult(3, "d.dcm", "ham10000", 3, PROBABILITIES, "NONE", 0.5,
                                  dicom=DICOM),
    "an error": ImageResult(4, "e.jpg", error=ImageError("INVALID_ARGUMENT", "NOT_AN_IMAGE",
                                                         "not a JPEG, PNG or DICOM image")),
}


@pytest.mark.parametrize("result", RESULTS.values(), ids=list(RESULTS))
def test_a_batch_result_survives_the_wire(result: ImageResult) -> None:
    wire = pb.BatchImageResult.FromString(result_message(result).SerializeToString())
    assert image_result(wire) == result


def test_the_message_says_what_the_result_says() -> None:
    message = result_message(RESULTS["low confidence"])
    assert message.top_label == "mel" and message.abstained
    assert [p.label for p in message.probabilities] == ["mel", "nv", "bkl"]
    assert (message.model.name, message.model.version) == ("ham10000", 3)
    error = result_message(RESULTS["an error"])
    assert error.HasField("error") and not error.probabilities
    assert (error.error.code, error.error.reason) == ("INVALID_ARGUMENT", "NOT_AN_IMAGE")


def test_a_dicom_reference_survives_the_wire() -> None:
    assert from_dicom_reference(to_dicom_reference(DICOM)) == DICOM
    assert not result_message(RESULTS["classified"]).HasField("dicom")
