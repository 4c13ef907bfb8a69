"""FHIR output: one classified image as HL7 FHIR resources, built and validated with the
fhir.resources models of FHIR R4B (4.3.0, the R4-family release fhir.resources ships; its
DiagnosticReport, Observation, Device and ImagingStudy have the R4 elements used here).

For each image (docs/integration.md shows them as produced, with the code mapping):
- a DiagnosticReport: status final, category DICOM DMS (dermoscopy), code "dermoscopy AI
  analysis", a conclusion, `result` -> the Observations, `imagingStudy` -> the study when the
  image was DICOM;
- one Observation per class probability, one for the top class, one for the abstention and its
  reason, one for the out-of-distribution score; each names the model as its `device`, points at
  the DICOM study (`derivedFrom`) when there is one, and carries the "not a diagnostic device"
  note;
- a Device: the model's name and version;
- an ImagingStudy when the image was DICOM: the study, series and SOP instance UIDs, the SOP
  class and the modality. Its required `subject` is a display-only reference: dermserve never
  copies the patient's name, ID or birth date, so the receiving system links the study to its
  patient by the study UID.

Codes: SNOMED CT where a concept fits and we are sure of it (melanoma, basal cell carcinoma, the
body site "skin"), DICOM (DCM) for the modality, UCUM for units, and the project's own code
systems (URIs below, documented) for everything without a standard code.

Transport-free and gRPC-free: the servicer (ClassifyRequest.format) calls `bundle_json`, whose
resources are validated on every call; the batch exporter (results.ndjson) writes the same
resources from `analysis_json` without validating each one again (see there why).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource

from dermserve.core.prediction import DicomReference, LabelProbability, Prediction

DERMSERVE_CODES = "urn:dermserve:fhir:CodeSystem:analysis"
"""The project's code system for what has no standard code: the report and observation kinds."""
DERMSERVE_LABELS = "urn:dermserve:fhir:CodeSystem:ham10000-label"
"""The model's class codes (mel, nv, bcc, akiec, bkl, df, vasc), as the model version names them."""
DERMSERVE_ABSTENTION = "urn:dermserve:fhir:CodeSystem:abstention"
"""Why a result should not be acted on: NONE, LOW_CONFIDENCE, OUT_OF_DISTRIBUTION."""
SNOMED = "http://snomed.info/sct"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID_SYSTEM = "urn:dicom:uid"
URI_SYSTEM = "urn:ietf:rfc:3986"
ID_NAMESPACE = uuid.UUID("6f1d4a8e-2b7c-5e39-9a41-0c8d2f7e5b13")
"""Namespace of the name-based ids of shared resources (a model version's Device, a study's
ImagingStudy), so that a batch export lists each once."""

NOT_A_DIAGNOSTIC_DEVICE = (
    "Produced by dermserve, a research decision-support tool: not a diagnostic device. The "
    "result must be reviewed by a clinician and must not be used alone for diagnosis or "
    "treatment.")

SNOMED_CLASSES: dict[str, tuple[str, str]] = {
    "mel": ("372244006", "Malignant melanoma"),
    "bcc": ("254701007", "Basal cell carcinoma of skin"),
}
"""HAM10000 classes with a SNOMED CT concept we are sure of; the others (nv, akiec, bkl, df,
vasc) carry only their dermserve code (docs/integration.md says why)."""
SKIN_STRUCTURE = ("39937001", "Skin structure")
DMS = ("DMS", "Dermoscopy")
SHARED_RESOURCES = frozenset({"Device", "ImagingStudy"})
"""Resource types that several images share, under name-based ids (listed once in an export)."""
MODALITY_DISPLAYS = {"DMS": "Dermoscopy", "XC": "External-camera Photography"}

Json = dict[str, Any]


def coding(system: str, code: str, display: str = "") -> Json:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def concept(system: str, code: str, display: str, text: str = "") -> Json:
    return {"coding": [coding(system, code, display)], **({"text": text} if text else {})}


def class_concept(label: str, display: str) -> Json:
    """A diagnostic class: its SNOMED CT concept when mapped, and its dermserve code."""
    codings = [coding(SNOMED, *SNOMED_CLASSES[label])] if label in SNOMED_CLASSES else []
    codings.append(coding(DERMSERVE_LABELS, label, display))
    return {"coding": codings, "text": display}


def reference(resource_type: str, resource_id: str, in_bundle: bool) -> Json:
    """In a Bundle, the entry's urn:uuid fullUrl; in an NDJSON export, Type/id."""
    if in_bundle:
        return {"reference": f"urn:uuid:{resource_id}"}
    return {"reference": f"{resource_type}/{resource_id}"}


def body(resource_type: str, elements: Json) -> Json:
    """A resource as a plain JSON object, resourceType first."""
    return {"resourceType": resource_type, **elements}


def validated(resource: Json) -> Resource:
    """`resource` validated by its fhir.resources model (raises on anything invalid)."""
    model = get_fhir_model_class(resource["resourceType"])
    return cast(Resource, model.model_validate(resource))


def instant(when: datetime) -> str:
    """A FHIR instant in UTC to the second, written as fhir.resources writes it (with Z)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def device_id(prediction: Prediction) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"device/{prediction.model_name}/"
                                        f"{prediction.model_version}"))


def study_id(dicom: DicomReference) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"study/{dicom.study_instance_uid}"))


def device(prediction: Prediction) -> Json:
    return body("Device", {
        "id": device_id(prediction),
        "status": "active",
        "manufacturer": "dermserve",
        "deviceName": [{"name": prediction.model_name, "type": "model-name"}],
        "type": {"text": "Skin lesion image classifier (machine-learning model)"},
        "version": [{"value": str(prediction.model_version)}],
        "note": [{"text": NOT_A_DIAGNOSTIC_DEVICE}],
    })


def resource_ids(seed: str) -> Iterator[str]:
    """Ids for one image's report and observations, in the order they are made: name-based on
    `seed` (the same job, image and version give the same ids, so a re-export updates the
    resources a receiver holds instead of duplicating them), or random without one."""
    if not seed:
        return (str(uuid.uuid4()) for _ in itertools.count())
    return (str(uuid.uuid5(ID_NAMESPACE, f"analysis/{seed}/{n}")) for n in itertools.count())


def modality_coding(modality: str) -> Json:
    return coding(DICOM_DCM, modality, MODALITY_DISPLAYS.get(modality, ""))


def imaging_study(instances: Sequence[DicomReference]) -> Json:
    """One study's ImagingStudy with every series and instance of `instances` (all of one
    study), each listed once, in the order first met."""
    first = instances[0]
    series: dict[str, dict[str, DicomReference]] = {}
    for item in instances:
        series.setdefault(item.series_instance_uid, {}).setdefault(item.sop_instance_uid, item)
    modalities = list(dict.fromkeys(item.modality for item in instances))
    return body("ImagingStudy", {
        "id": study_id(first),
        "identifier": [{"system": DICOM_UID_SYSTEM,
                        "value": f"urn:oid:{first.study_instance_uid}"}],
        "status": "available",
        "subject": {"display": "the patient of this DICOM study (identity not copied)"},
        "modality": [modality_coding(modality) for modality in modalities],
        "numberOfSeries": len(series),
        "numberOfInstances": sum(len(members) for members in series.values()),
        "series": [{
            "uid": uid,
            "modality": modality_coding(next(iter(members.values())).modality),
            "instance": [{"uid": member.sop_instance_uid,
                          "sopClass": coding(URI_SYSTEM, f"urn:oid:{member.sop_class_uid}")}
                         for member in members.values()],
        } for uid, members in series.items()],
    })


def imaging_studies(dicoms: Iterable[DicomReference]) -> list[Json]:
    """An ImagingStudy per study among `dicoms`, each with all of its series and instances."""
    studies: dict[str, list[DicomReference]] = {}
    for dicom in dicoms:
        studies.setdefault(dicom.study_instance_uid, []).append(dicom)
    return [imaging_study(instances) for instances in studies.values()]


class ObservationFactory:
    """Observations of one image, sharing the device, study, time and note."""

    def __init__(self, prediction: Prediction, issued: str, in_bundle: bool,
                 ids: Iterator[str]) -> None:
        self.ids = ids
        self.common: Json = {
            "status": "final",
            "category": [concept(OBSERVATION_CATEGORY, "imaging", "Imaging")],
            "bodySite": concept(SNOMED, *SKIN_STRUCTURE),
            "effectiveDateTime": issued,
            "issued": issued,
            "device": reference("Device", device_id(prediction), in_bundle),
            "note": [{"text": NOT_A_DIAGNOSTIC_DEVICE}],
        }
        if prediction.dicom is not None:
            self.common["derivedFrom"] = [
                reference("ImagingStudy", study_id(prediction.dicom), in_bundle)]

    def make(self, code: str, display: str, text: str, value: Json) -> Json:
        return body("Observation", {"id": next(self.ids), **self.common,
                                     "code": concept(DERMSERVE_CODES, code, display, text),
                                     **value})

    def probability(self, item: LabelProbability) -> Json:
        return self.make(
            "class-probability", "Model probability of a diagnostic class",
            f"Probability of {item.display_name}",
            {"valueQuantity": {"value": round(item.probability, 6), "unit": "probability",
                               "system": UCUM, "code": "1"},
             "component": [{"code": concept(DERMSERVE_CODES, "diagnostic-class",
                                            "Diagnostic class"),
                            "valueCodeableConcept": class_concept(item.label,
                                                                  item.display_name)}]})

    def top_class(self, item: LabelProbability) -> Json:
        return self.make("top-class", "Most probable diagnostic class", "Top class",
                         {"valueCodeableConcept": class_concept(item.label, item.display_name)})

    def abstention(self, prediction: Prediction) -> Json:
        reason = prediction.abstention.value
        return self.make("abstention", "Abstention and its reason",
                         "Abstained: the result needs human review" if prediction.abstained
                         else "Not abstained",
                         {"valueCodeableConcept": concept(DERMSERVE_ABSTENTION, reason,
                                                          reason.replace("_", " ").lower())})

    def ood_score(self, prediction: Prediction) -> Json:
        return self.make("ood-score", "Out-of-distribution score",
                         "Out-of-distribution score (higher: less like the training images)",
                         {"valueQuantity": {"value": round(prediction.ood_score, 6),
                                            "system": UCUM, "code": "1"}})


def observations(prediction: Prediction, issued: str, in_bundle: bool,
                 ids: Iterator[str]) -> list[Json]:
    factory = ObservationFactory(prediction, issued, in_bundle, ids)
    return [*(factory.probability(item) for item in prediction.probabilities),
            factory.top_class(prediction.probabilities[0]),
            factory.abstention(prediction), factory.ood_score(prediction)]


def conclusion(prediction: Prediction) -> str:
    top = prediction.probabilities[0]
    text = f"Most probable class: {top.display_name} (probability {top.probability:.3f})."
    if prediction.abstained:
        text += (f" The model abstained ({prediction.abstention.value}): do not act on this "
                 "result; the image needs human review.")
    return f"{text} {NOT_A_DIAGNOSTIC_DEVICE}"


def diagnostic_report(prediction: Prediction, results: Sequence[Json], issued: str,
                      in_bundle: bool, report_id: str) -> Json:
    top = prediction.probabilities[0]
    elements: Json = {
        "id": report_id,
        "status": "final",
        "category": [concept(DICOM_DCM, *DMS)],
        "code": concept(DERMSERVE_CODES, "dermoscopy-ai-analysis",
                        "Dermoscopy image analysis by a machine-learning model",
                        "Dermoscopy AI analysis"),
        "effectiveDateTime": issued,
        "issued": issued,
        "result": [reference("Observation", item["id"], in_bundle) for item in results],
        "conclusion": conclusion(prediction),
    }
    if not prediction.abstained:  # an abstained result names no finding
        elements["conclusionCode"] = [class_concept(top.label, top.display_name)]
    if prediction.dicom is not None:
        elements["imagingStudy"] = [reference("ImagingStudy", study_id(prediction.dicom),
                                              in_bundle)]
    if prediction.request_id:
        elements["identifier"] = [{"system": f"{DERMSERVE_CODES}:request-id",
                                   "value": prediction.request_id}]
    return body("DiagnosticReport", elements)


def analysis_json(prediction: Prediction, issued: datetime | None = None,
                  in_bundle: bool = True, seed: str = "") -> list[Json]:
    """The report first, then its observations, the device and the study (if DICOM), as plain
    JSON objects: what `analysis_resources` validates. The batch export writes these directly:
    validating 11 resources per image with fhir.resources took longer than classifying the
    image (docs/integration.md); tests/core/test_fhir.py validates every shape they take.
    `seed` names the image (see `resource_ids`); without one the ids are random."""
    when = instant(issued or datetime.now(UTC))
    ids = resource_ids(seed)
    report_id = next(ids)
    results = observations(prediction, when, in_bundle, ids)
    report = diagnostic_report(prediction, results, when, in_bundle, report_id)
    study = imaging_studies([prediction.dicom]) if prediction.dicom is not None else []
    return [report, *results, device(prediction), *study]


def analysis_resources(prediction: Prediction, issued: datetime | None = None,
                       in_bundle: bool = True) -> list[Resource]:
    """`analysis_json`, each validated by its fhir.resources model."""
    return [validated(resource) for resource in analysis_json(prediction, issued, in_bundle)]


def bundle(prediction: Prediction, issued: datetime | None = None) -> Bundle:
    """A collection Bundle of `analysis_resources`, each entry with a urn:uuid fullUrl."""
    when = issued or datetime.now(UTC)
    entries = [{"fullUrl": f"urn:uuid:{resource.id}", "resource": resource}
               for resource in analysis_resources(prediction, when)]
    built: Bundle = Bundle.model_validate({
        "resourceType": "Bundle", "type": "collection",
        "timestamp": instant(when), "entry": entries})
    return built


def bundle_json(prediction: Prediction, issued: datetime | None = None) -> str:
    return bundle(prediction, issued).model_dump_json()


def resource_json(resource: Json) -> str:
    """One resource of `analysis_json` as one line of JSON (the Bulk Data NDJSON convention)."""
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
