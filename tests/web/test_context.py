"""Patient context from the web page's form to the model: the real page in headless Chromium
and over HTTP, the real web server, the real front and the real embedded backend serving the
context model base (tests/context_models.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from dermserve.core.backends.base import Backend
from tests.context_models import received
from tests.service.conftest import FakeBackend, good_jpeg
from tests.web.conftest import Web, running_web

PAGE = {"X-Dermserve-Page": "1", "Content-Type": "application/octet-stream"}


@pytest.fixture
def context_web(context_backend: Backend) -> Iterator[Web]:
    """The page before a front whose latest version (3) takes context."""
    with running_web(context_backend) as web:
        yield web


def post(web: Web, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(web.url + "/api/analyze", data=good_jpeg(),
                                     headers={**PAGE, **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def read_back(classification: dict[str, Any]) -> tuple[float, int, int]:
    return received({item["label"]: item["probability"]
                     for item in classification["probabilities"]})


def test_the_context_headers_reach_the_model(context_web: Web) -> None:
    status, answer = post(context_web, {"X-Dermserve-Age": "52", "X-Dermserve-Sex": "male",
                                        "X-Dermserve-Site": "scalp"})
    assert status == 200
    assert read_back(answer["classification"]) == (52.0, 2, 18)
    assert answer["classification"]["context_used"] is True
    assert answer["explanation"]["available"]  # its explain signature takes the context too
    status, plain = post(context_web, {})
    assert status == 200 and read_back(plain["classification"]) == (-1.0, 0, 0)


@pytest.mark.parametrize("headers", [{"X-Dermserve-Age": "130"},
                                     {"X-Dermserve-Age": "old"},
                                     {"X-Dermserve-Site": "elbow"}])
def test_a_bad_context_value_is_400_invalid_context(context_web: Web,
                                                    headers: dict[str, str]) -> None:
    status, answer = post(context_web, headers)
    assert status == 400 and answer["error"]["reason"] == "INVALID_CONTEXT"


def test_the_forms_fields_travel_with_the_upload(page: Page, context_web: Web,
                                                 tmp_path: Path) -> None:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(good_jpeg())
    answers: list[dict[str, Any]] = []

    def keep(route: Route) -> None:  # the page's own request, passed on; its answer kept
        response = route.fetch()
        answers.append(response.json())
        route.fulfill(response=response)

    page.route("**/api/analyze", keep)
    page.goto(context_web.url)
    page.get_by_label("Age in years").fill("33")
    page.get_by_label("Sex").select_option("female")
    page.get_by_label("Body site").select_option("upper extremity")
    page.locator("#files").set_input_files([str(image)])
    expect(page.locator(".result .request")).to_contain_text("the patient context was used")
    assert read_back(answers[0]["classification"]) == (33.0, 1, 20)
    page.get_by_label("Age in years").fill("150")
    page.locator("#files").set_input_files([str(image)])
    expect(page.locator(".result", has_text="INVALID_CONTEXT")).to_have_count(1)




def test_a_version_that_cannot_explain_with_context_is_classified_with_it() -> None:
    backend = FakeBackend()
    backend.context_versions = {2}  # serving_default takes context, explain does not
    with running_web(backend) as web:
        status, answer = post(web, {"X-Dermserve-Sex": "female"})
    assert status == 200 and answer["classification"]["context_used"] is True
    assert answer["explanation"]["reason"] == "EXPLANATION_WITHOUT_CONTEXT"
    assert "patient context" in answer["explanation"]["message"]
    sent = [rows.sex.tolist() for rows in backend.contexts if rows is not None]
    assert sent == [[1]]  # the Classify call; the health probes send none
