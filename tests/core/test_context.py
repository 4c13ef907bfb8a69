"""The patient context's one validation and its encoding as a model's context inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dermserve.core.context import (
    NO_CONTEXT,
    AnatomicSite,
    ContextBatch,
    PatientContext,
    Sex,
    lenient_context,
    patient_context,
)
from dermserve.core.errors import InvalidContext, InvalidInput
from dermserve.trainer.two_origin_network import SITE_GROUPS


def test_values_are_read_whatever_their_case_and_spacing() -> None:
    context = patient_context("45", " Female ", "Upper_Extremity")
    assert context == PatientContext(45.0, Sex.FEMALE, AnatomicSite.UPPER_EXTREMITY)
    assert patient_context(0, "MALE", "head/neck") == PatientContext(0.0, Sex.MALE,
                                                                     AnatomicSite.HEAD_NECK)


def test_absent_and_unknown_values_know_nothing() -> None:
    assert patient_context() == NO_CONTEXT
    assert patient_context("", "unknown", "Unknown").empty
    assert patient_context(None, "other", "").sex is None  # sex: any other word is unknown


@pytest.mark.parametrize("age", [-0.5, 120.5, math.nan, math.inf, "old", "45y"])
def test_an_age_out_of_range_or_not_a_number_is_refused_without_quoting_it(
        age: float | str) -> None:
    with pytest.raises(InvalidContext) as caught:
        patient_context(age)
    assert isinstance(caught.value, InvalidInput)  # INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_CONTEXT"
    assert str(age) not in caught.value.message


def test_a_site_outside_the_vocabulary_is_refused_without_quoting_it() -> None:
    with pytest.raises(InvalidContext) as caught:
        patient_context(site="left elbow of patient 1234")
    assert "1234" not in caught.value.message
    assert "upper extremity" in caught.value.client_message  # the hint lists the sites


def test_every_site_the_datasets_record_is_in_the_vocabulary() -> None:
    recorded = {site for sites in SITE_GROUPS.values() for site in sites}
    recorded |= {"acral", "palms/soles", "oral/genital"}  # the sites that span groups
    assert {patient_context(site=site).site for site in recorded} == set(AnatomicSite)


def test_a_files_bad_values_are_dropped_not_refused() -> None:
    assert lenient_context("200", "O", "elbow") == NO_CONTEXT
    assert lenient_context("45", "M", "bogus") == PatientContext(45.0, None, None)


def test_a_requests_values_win_over_its_files_field_by_field() -> None:
    request = PatientContext(age_years=30.0)
    file = PatientContext(70.0, Sex.MALE, AnatomicSite.BACK)
    assert request.over(file) == PatientContext(30.0, Sex.MALE, AnatomicSite.BACK)


def test_the_encoding_follows_the_contract() -> None:
    batch = ContextBatch.of([PatientContext(45.0, Sex.FEMALE, AnatomicSite.ABDOMEN), None,
                             PatientContext(site=AnatomicSite.UPPER_EXTREMITY)])
    tensors = batch.tensors()
    np.testing.assert_array_equal(tensors["age_years"], np.array([45.0, -1.0, -1.0], np.float32))
    np.testing.assert_array_equal(tensors["sex"], np.array([1, 0, 0], np.int32))
    np.testing.assert_array_equal(tensors["site"], np.array([1, 0, 20], np.int32))
    assert tensors["age_years"].dtype == np.float32 and tensors["site"].dtype == np.int32
    joined = ContextBatch.joined([batch, ContextBatch.neutral(2)])
    assert len(joined) == 5 and joined.rows(1, 3).sex.tolist() == [0, 0]
