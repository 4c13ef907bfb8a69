"""Classification results on the wire and back: the DICOM reference a result carries, and a
batch image's result, which the front sends (`result_message`) and the CLI reads back into the
job's own record (`image_result`) to write the same CSV and NDJSON the job wrote."""

from __future__ import annotations

import dataclasses

from dermserve.batch.results import ImageError, ImageResult
from dermserve.core.prediction import DicomReference
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import lesion_classifier_pb2 as lc


def to_dicom_reference(dicom: DicomReference) -> lc.DicomReference:
    return lc.DicomReference(**dataclasses.asdict(dicom))


def from_dicom_reference(message: lc.DicomReference) -> DicomReference:
    return DicomReference(message.study_instance_uid, message.series_instance_uid,
                          message.sop_instance_uid, message.sop_class_uid, message.modality)


def result_message(result: ImageResult) -> pb.BatchImageResult:
    message = pb.BatchImageResult(index=result.index, reference=result.reference)
    if result.error is not None:
        message.error.CopyFrom(lc.ImageError(code=result.error.code, reason=result.error.reason,
                                             message=result.error.message))
        return message
    message.probabilities.extend(
        lc.LabelProbability(label=label, display_name=name, probability=p)
        for label, name, p in result.probabilities)
    message.top_label = result.top_label
    message.abstained = result.abstained
    if result.abstained:
        message.abstention_reason = lc.AbstentionReason.Value(
            f"ABSTENTION_REASON_{result.abstention}")
    message.ood_score = result.ood_score
    message.model.CopyFrom(lc.ModelVersionRef(name=result.model_name,
                                              version=result.model_version))
    if result.dicom is not None:
        message.dicom.CopyFrom(to_dicom_reference(result.dicom))
    message.context_used = result.context_used
    return message


def image_result(message: pb.BatchImageResult) -> ImageResult:
    """The inverse of `result_message`: what a client got back, as the job stored it (the CLI
    writes its CSV from these with the job's own exporter)."""
    if message.HasField("error"):
        error = message.error
        return ImageResult(message.index, message.reference,
                           error=ImageError(error.code, error.reason, error.message))
    reason = lc.AbstentionReason.Name(message.abstention_reason)
    return ImageResult(
        message.index, message.reference, message.model.name, message.model.version,
        tuple((p.label, p.display_name, p.probability) for p in message.probabilities),
        reason.removeprefix("ABSTENTION_REASON_") if message.abstained else "NONE",
        message.ood_score,
        dicom=from_dicom_reference(message.dicom) if message.HasField("dicom") else None,
        context_used=message.context_used)
