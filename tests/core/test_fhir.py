"""The FHIR output (dermserve/core/fhir.py): every resource validates with its fhir.resources R4B
model, a Bundle survives a JSON round trip, its references resolve, and the codes follow the mapping
documented in docs/integration.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from dermserve.core import fhir
from dermserve.core.model_config import HAM10000_DISPLAY_NAMES
from dermserve.core.prediction import Abstention, DicomReference, LabelProbability, Prediction

ISSUED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
DICOM = DicomReference("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2",
                       "1.2.826.0.1.3680043.8.498.3", "1.2.840.10008.5.1.4.1.1.77.1.7", "DMS")


def prediction(top: str = "mel", abstention: Abstention = Abstention.NONE,
               dicom: DicomReference | None = DICOM) -> Prediction:
    others = [label for label in HAM10000_DISPLAY_NAMES if label != top]
    probabilities = [LabelProbability(top, HAM10000_DISPLAY_NAMES[top], 0.64)] + [
        LabelProbability(label, HAM10000_DISPLAY_NAMES[label], 0.06) for label in others]
    return Prediction("req-42", "ham10000", 2, tuple(probabilities), abstention, 0.25, dicom)


def entries(bundle: Bundle, kind: str) -> list:  # type: ignore[type-arg]
    return [entry.resource for entry in bundle.entry if entry.resource.get_resource_type() == kind]


def test_the_bundle_round_trips_through_json_and_every_resource_validates() -> None:
    text = fhir.bundle_json(prediction(), ISSUED)
    bundle = Bundle.model_validate_json(text)
    assert json.loads(bundle.model_dump_json()) == json.loads(text)
    for entry in json.loads(text)["entry"]:  # each resource alone, through its own model
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    kinds = sorted(entry.resource.get_resource_type() for entry in bundle.entry)
    assert kinds == sorted(["DiagnosticReport", "Device", "ImagingStudy", *["Observation"] * 10])


def test_every_reference_resolves_inside_the_bundle() -> None:
    raw = json.loads(fhir.bundle_json(prediction(), ISSUED))
    full_urls = {entry["fullUrl"] for entry in raw["entry"]}

    def references(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["reference"]] if "reference" in node else []
            return found + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in references(value)]
        return []

    found = references(raw)
    assert found and set(found) <= full_urls


def test_the_report_and_observations_carry_the_result() -> None:
    bundle = fhir.bundle(prediction(), ISSUED)
    (report,) = entries(bundle, "DiagnosticReport")
    assert report.status == "final" and report.category[0].coding[0].code == "DMS"
    assert report.code.coding[0].code == "dermoscopy-ai-analysis"
    assert "not a diagnostic device" in report.conclusion
    assert [(c.system, c.code) for c in report.conclusionCode[0].coding] == [
        (fhir.SNOMED, "372244006"), (fhir.DERMSERVE_LABELS, "mel")]
    observations = entries(bundle, "Observation")
    probabilities = {obs.component[0].valueCodeableConcept.coding[-1].code:
                     float(obs.valueQuantity.value)
                     for obs in observations if obs.code.coding[0].code == "class-probability"}
    assert set(probabilities) == set(HAM10000_DISPLAY_NAMES) and probabilities["mel"] == 0.64
    assert all(obs.note[0].text == fhir.NOT_A_DIAGNOSTIC_DEVICE for obs in observations)
    assert all(obs.derivedFrom and obs.device for obs in observations)
    (device,) = entries(bundle, "Device")
    assert device.version[0].value == "2" and device.deviceName[0].name == "ham10000"


def test_an_abstained_result_names_no_finding() -> None:
    bundle = fhir.bundle(prediction(abstention=Abstention.OUT_OF_DISTRIBUTION), ISSUED)
    (report,) = entries(bundle, "DiagnosticReport")
    assert report.conclusionCode is None and "abstained" in report.conclusion
    (abstention,) = [obs for obs in entries(bundle, "Observation")
                     if obs.code.coding[0].code == "abstention"]
    assert abstention.valueCodeableConcept.coding[0].code == "OUT_OF_DISTRIBUTION"


@pytest.mark.parametrize("top", sorted(HAM10000_DISPLAY_NAMES))
def test_each_class_is_coded_and_only_mapped_classes_carry_snomed(top: str) -> None:
    bundle = fhir.bundle(prediction(top), ISSUED)
    (report,) = entries(bundle, "DiagnosticReport")
    systems = [c.system for c in report.conclusionCode[0].coding]
    assert systems[-1] == fhir.DERMSERVE_LABELS
    assert (fhir.SNOMED in systems) == (top in fhir.SNOMED_CLASSES)


def test_an_image_that_was_not_dicom_has_no_study() -> None:
    bundle = fhir.bundle(prediction(dicom=None), ISSUED)
    assert entries(bundle, "ImagingStudy") == []
    (report,) = entries(bundle, "DiagnosticReport")
    assert report.imagingStudy is None


@pytest.mark.parametrize("case", ["dicom", "jpeg", "abstained", "no-request-id", *sorted(
    HAM10000_DISPLAY_NAMES)])
@pytest.mark.parametrize("in_bundle", [True, False])
def test_the_unvalidated_json_the_batch_export_writes_is_what_validation_gives(
        case: str, in_bundle: bool) -> None:
    # results.ndjson writes analysis_json without validating each resource (it cost more than
    # the classification): every shape it can take validates, and the model's own JSON of it
    # says the same thing.
    base = prediction(case if case in HAM10000_DISPLAY_NAMES else "mel",
                      Abstention.LOW_CONFIDENCE if case == "abstained" else Abstention.NONE,
                      None if case == "jpeg" else DICOM)
    if case == "no-request-id":
        base = Prediction("", base.model_name, base.model_version, base.probabilities,
                          base.abstention, base.ood_score, base.dicom)
    for resource in fhir.analysis_json(base, ISSUED, in_bundle):
        written = json.loads(fhir.resource_json(resource))
        model = get_fhir_model_class(resource["resourceType"]).model_validate(written)
        assert json.loads(model.model_dump_json()) == written
