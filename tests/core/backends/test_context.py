"""Patient context through both backends: a version whose serving_default takes the context
inputs gets each image's row (the neutral row when none is given); a version without them
answers exactly as before and is never sent them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dermserve.core.backends.base import Backend, ModelRef
from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.backends.savedmodel import check_context_inputs
from dermserve.core.backends.tfserving import TFServingBackend
from dermserve.core.context import NO_CONTEXT, ContextBatch, patient_context
from dermserve.core.errors import InternalError
from tests.conftest import TINY_MODEL_NAME
from tests.context_models import received
from tests.core.backends.test_embedded import images
from tests.core.backends.tfserving_server import start_fake_tfserving

CONTEXT_VERSION = ModelRef(TINY_MODEL_NAME, version=3)
PLAIN_VERSION = ModelRef(TINY_MODEL_NAME, version=2)
ROWS = ContextBatch.of([patient_context(45, "male", "trunk"), None,
                        patient_context(None, "female", "upper extremity")])
"""Three images: full context, none, and all but the age."""


@pytest.fixture(params=["embedded", "tfserving"])
def backend(request: pytest.FixtureRequest, context_model_base: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        embedded = EmbeddedBackend(context_model_base, TINY_MODEL_NAME, settle_s=0.05,
                                   max_loaded_versions=3)
        embedded.start()
        yield embedded
        embedded.close()
        return
    server = start_fake_tfserving(context_model_base, TINY_MODEL_NAME, settle_s=0.05,
                                  max_loaded_versions=3)
    client = TFServingBackend(server.target, TINY_MODEL_NAME)
    yield client
    client.close()
    server.stop()


def answered(backend: Backend, ref: ModelRef, context: ContextBatch | None,
             count: int = 3) -> list[tuple[float, int, int]]:
    output = backend.predict(ref, images(count), 10.0, context)
    labels = output.version.config.labels if output.version.config else ()
    return [received(dict(zip(labels, row.tolist(), strict=True)))
            for row in output.probabilities]


def test_a_context_version_gets_each_images_row(backend: Backend) -> None:
    assert backend.resolve(CONTEXT_VERSION).takes_context
    assert answered(backend, CONTEXT_VERSION, ROWS) == [(45.0, 2, 19), (-1.0, 0, 0),
                                                        (-1.0, 1, 20)]


def test_a_context_version_without_context_gets_the_neutral_rows(backend: Backend) -> None:
    assert answered(backend, CONTEXT_VERSION, None, 2) == [(-1.0, 0, 0)] * 2
    assert answered(backend, CONTEXT_VERSION, ContextBatch.of([NO_CONTEXT] * 2), 2) == [
        (-1.0, 0, 0)] * 2


def test_a_version_without_context_inputs_ignores_the_context(backend: Backend) -> None:
    """The TF Serving stand-in refuses inputs its signature lacks, as TF Serving does: the
    plain version answering at all shows none was sent."""
    info = backend.resolve(PLAIN_VERSION)
    assert not info.takes_context
    with_context = backend.predict(PLAIN_VERSION, images(3), 10.0, ROWS)
    without = backend.predict(PLAIN_VERSION, images(3), 10.0)
    np.testing.assert_array_equal(with_context.probabilities, without.probabilities)


def test_versions_list_says_which_take_context(backend: Backend) -> None:
    listed = {info.version: info.takes_context
              for info in backend.list_versions(TINY_MODEL_NAME, 10.0)}
    assert listed == {1: False, 2: False, 3: True}


@pytest.mark.parametrize("declared", [
    {"age_years": ("float32", [None])},  # one of three
    {"age_years": ("int32", [None]), "sex": ("int32", [None]), "site": ("int32", [None])},
    {"age_years": ("float32", [None]), "sex": ("int32", [None, 1]), "site": ("int32", [None])},
])
def test_a_half_or_wrongly_declared_context_is_a_bad_signature(
        declared: dict[str, tuple[str, list[int | None]]]) -> None:
    with pytest.raises(InternalError) as caught:
        check_context_inputs(declared)
    assert caught.value.reason == "BAD_MODEL_SIGNATURE"


def test_the_contracts_declaration_takes_context() -> None:
    assert check_context_inputs({"age_years": ("float32", [None]), "sex": ("int32", [None]),
                                 "site": ("int32", [None])})
    assert not check_context_inputs({})




def test_explain_gets_each_images_row_where_its_signature_takes_context(
        backend: Backend) -> None:
    info = backend.resolve(CONTEXT_VERSION)
    assert info.explain_takes_context
    output = backend.explain(CONTEXT_VERSION, images(3), np.full(3, -1, np.int32), 10.0, ROWS)
    labels = info.config.labels if info.config else ()
    assert [received(dict(zip(labels, row.tolist(), strict=True)))
            for row in output.probabilities] == [(45.0, 2, 19), (-1.0, 0, 0), (-1.0, 1, 20)]
    plain = backend.explain(PLAIN_VERSION, images(3), np.full(3, -1, np.int32), 10.0, ROWS)
    assert not backend.resolve(PLAIN_VERSION).explain_takes_context
    np.testing.assert_array_equal(
        plain.probabilities,
        backend.explain(PLAIN_VERSION, images(3), np.full(3, -1, np.int32), 10.0).probabilities)
