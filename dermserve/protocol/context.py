"""Patient context on the wire and back (dermserve.v1.PatientContext <-> core.context), so the
front, the web page and any client convert it the same way; core/context.py validates."""

from __future__ import annotations

from dermserve.core.context import PatientContext, patient_context
from dermserve.v1 import lesion_classifier_pb2 as pb


def from_message(request: pb.ClassifyRequest | pb.ExplainRequest) -> PatientContext | None:
    """The request's patient context, validated (INVALID_CONTEXT), or None when it has none."""
    if not request.HasField("context"):
        return None
    given = request.context
    return patient_context(given.age_years if given.HasField("age_years") else None,
                           given.sex if given.HasField("sex") else None,
                           given.site if given.HasField("site") else None)


def to_message(context: PatientContext) -> pb.PatientContext | None:
    """`context` as a request's field (its known values only), or None when it knows nothing."""
    if context.empty:
        return None
    message = pb.PatientContext()
    if context.age_years is not None:
        message.age_years = context.age_years
    if context.sex is not None:
        message.sex = context.sex.value
    if context.site is not None:
        message.site = context.site.value
    return message
