"""The clinicians' page in Debian's headless Chromium, against the real web server and the real
gRPC front (over the FakeBackend: these tests are about the page, not the model): an image's
seven bars and verdict, the rejection reasons, the size limit, the security headers, keyboard
navigation and accessible names, and nothing uploaded in the logs."""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from dermserve.core.backends.base import ExplainOutput, ModelRef
from dermserve.core.errors import BackendTimeout
from devtools.dicom_sample import photograph_dataset, to_bytes
from tests.service.conftest import FakeBackend, good_jpeg
from tests.web.conftest import Web, running_web

SHARED_IMAGES = Path(__file__).resolve().parents[2].parent / "shared/data/ham10000/images"
TEXT_AS_JPEG = b"Patient notes, not an image.\n" * 20
FOCUSABLE_ROLES = {"link", "button", "checkbox", "textbox", "combobox", "spinbutton", "radio"}


def ham10000_image() -> Path:
    images = sorted(SHARED_IMAGES.glob("*.jpg"))
    if not images:
        pytest.skip("../shared HAM10000 images are not here")
    return images[0]


def expect_tab_order(page: Page, controls: list[Locator]) -> None:
    """From the page's body, each Tab moves the focus to the next of `controls`."""
    page.locator("body").focus()
    for control in controls:
        page.keyboard.press("Tab")
        expect(control).to_be_focused()


def upload(page: Page, web: Web, *files: object) -> None:
    page.goto(web.url)
    page.locator("#files").set_input_files(list(files))  # type: ignore[arg-type]
    expect(page.locator(".result[aria-busy=false]")).to_have_count(len(files))


def test_a_ham10000_image_shows_seven_bars_its_verdict_and_its_model(page: Page,
                                                                     fake_web: Web) -> None:
    upload(page, fake_web, ham10000_image())
    result = page.locator(".result")
    expect(result.locator("meter")).to_have_count(7)
    expect(result.locator(".state")).to_contain_text(re.compile("^(Result|Needs review): "))
    link = result.get_by_role("link", name=re.compile("Model ham10000 version 2"))
    expect(link).to_have_attribute("href", "/model?version=2")
    # The FakeBackend's versions record no melanoma threshold, and say so.
    expect(result.locator(".operating-point")).to_contain_text("no melanoma operating point")
    expect(page.get_by_role("note")).to_contain_text("not a diagnostic device")
    expect(page.get_by_role("status")).to_contain_text(re.compile(
        r"^Done: [01] classified, [01] need review \(abstained\), 0 rejected\.$"))
    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Model card: ham10000 version 2")
    expect(page.locator("#description")).to_have_text("fake version 2")


def test_several_images_get_one_card_each(page: Page, fake_web: Web) -> None:
    first = ham10000_image()
    upload(page, fake_web, {"name": first.name, "mimeType": "image/jpeg",
                            "buffer": first.read_bytes()},
           {"name": "b.jpg", "mimeType": "image/jpeg", "buffer": good_jpeg()})
    expect(page.locator(".result meter")).to_have_count(14)
    expect(page.locator(".result h2")).to_have_text([first.name, "b.jpg"])  # in upload order


def test_a_dicom_file_is_classified_with_its_study(page: Page, fake_web: Web) -> None:
    """The page sends DICOM bytes as they are: the front reads them, and the card names the
    study and instance the result belongs to."""
    dataset = photograph_dataset(Image.open(ham10000_image()), "jpeg-ybr422")
    upload(page, fake_web, {"name": "lesion.dcm", "mimeType": "application/dicom",
                            "buffer": to_bytes(dataset)})
    expect(page.locator(".result meter")).to_have_count(7)
    expect(page.locator(".result .request")).to_contain_text(
        f"DICOM study {dataset.StudyInstanceUID}, instance {dataset.SOPInstanceUID}")


class SlowExplanations(FakeBackend):
    """Classifies at once; every explanation misses its deadline."""

    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None, context: object = None) -> ExplainOutput:
        raise BackendTimeout("the explanation took too long")


def test_a_failed_explanation_still_classifies_and_says_so(page: Page) -> None:
    with running_web(SlowExplanations()) as web:
        upload(page, web, ham10000_image())
        expect(page.locator(".explain-note")).to_have_text(
            "No heatmap: the explanation failed (DEADLINE_EXCEEDED); the classification is "
            "complete.")
        expect(page.get_by_role("checkbox", name="Show heatmap overlay")).to_be_disabled()
        expect(page.locator(".result meter")).to_have_count(7)


def test_a_text_file_renamed_jpg_shows_the_apis_rejection_reason(page: Page,
                                                                 fake_web: Web) -> None:
    upload(page, fake_web, {"name": "notes.jpg", "mimeType": "image/jpeg",
                            "buffer": TEXT_AS_JPEG})
    state = page.locator(".result.rejected .state")
    expect(state).to_contain_text("only JPEG, PNG and DICOM images are accepted")
    expect(state).to_contain_text("UNSUPPORTED_FORMAT")
    expect(page.locator(".result meter")).to_have_count(0)


def test_an_image_over_the_limit_is_refused_before_upload_and_by_the_server(
        page: Page, caplog: pytest.LogCaptureFixture) -> None:
    image = good_jpeg()
    with caplog.at_level(logging.INFO), running_web(FakeBackend(),
                                                    max_image_bytes=len(image) - 1) as web:
        upload(page, web, {"name": "big.jpg", "mimeType": "image/jpeg", "buffer": image})
        state = page.locator(".result.rejected .state")
        expect(state).to_contain_text("IMAGE_TOO_LARGE")
        expect(state).to_contain_text("not uploaded")
        request = urllib.request.Request(web.url + "/api/analyze", data=image, method="POST",
                                         headers={"X-Dermserve-Page": "1"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 413
        assert json.load(refused.value)["error"]["reason"] == "IMAGE_TOO_LARGE"
    # The page sent nothing; the one upload the server saw was the test's own, refused.
    assert [r.getMessage() for r in caplog.records if "/api/analyze" in r.getMessage()] == [
        "POST /api/analyze 413"]


class Markup(HTMLParser):
    """Inline scripts, inline event handlers and style attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_script = tag == "script"
        if tag == "script":
            self.scripts.append(dict(attrs))
        self.inline += [f"{tag} {name}" for name, _ in attrs
                        if name == "style" or name.startswith("on")]

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.inline.append(f"script body {data[:40]!r}")

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False


@pytest.mark.parametrize("path", ["/", "/jobs", "/model"])
def test_pages_send_a_strict_csp_and_carry_no_inline_script_or_style(fake_web: Web,
                                                                     path: str) -> None:
    with urllib.request.urlopen(fake_web.url + path, timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        markup = Markup()
        markup.feed(response.read().decode())
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert markup.scripts and all(script.get("src") for script in markup.scripts)
    assert markup.inline == []
    head = urllib.request.Request(fake_web.url + path, method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as response:
        assert response.headers["Content-Security-Policy"] == policy
        assert response.read() == b""


def test_the_page_runs_without_a_csp_violation(page: Page, fake_web: Web) -> None:
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    upload(page, fake_web, ham10000_image())
    expect(page.locator(".result meter")).to_have_count(7)
    assert not [m for m in messages if "Content Security Policy" in m]


def accessible_controls(page: Page) -> list[tuple[str, str]]:
    """(role, name) of every control in Chromium's accessibility tree."""
    session = page.context.new_cdp_session(page)
    tree = session.send("Accessibility.getFullAXTree")["nodes"]
    return [(node["role"]["value"], node.get("name", {}).get("value", ""))
            for node in tree if not node.get("ignored")
            and node.get("role", {}).get("value") in FOCUSABLE_ROLES]


@pytest.mark.parametrize("path", ["/", "/jobs"])
def test_every_control_has_an_accessible_name(page: Page, fake_web: Web, path: str) -> None:
    if path == "/":
        upload(page, fake_web, ham10000_image())
    else:
        page.goto(fake_web.url + path)
        page.get_by_label("Job id").fill("no-such-job")
        page.get_by_role("button", name="Follow job").click()
        expect(page.get_by_role("button", name="Remove no-such-job")).to_be_visible()
    controls = accessible_controls(page)
    assert len(controls) >= 4
    assert [control for control in controls if not control[1].strip()] == []


def test_the_keyboard_reaches_the_views_the_upload_and_the_model_card_in_order(
        page: Page, fake_web: Web) -> None:
    upload(page, fake_web, ham10000_image())
    expected = [page.get_by_role("link", name="Classify images"),
                page.get_by_role("link", name="Batch jobs"),
                page.get_by_label("Age in years"), page.get_by_label("Sex"),
                page.get_by_label("Body site"),
                page.get_by_label(re.compile("Drop JPEG, PNG or DICOM images")),
                page.get_by_role("link", name=re.compile("model card"))]
    expect_tab_order(page, expected)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/model\?version=2$"))


def test_an_unknown_job_shows_the_apis_reason(page: Page, fake_web: Web) -> None:
    page.goto(fake_web.url + "/jobs")
    page.get_by_label("Job id").fill("no-such-job")
    page.keyboard.press("Enter")
    expect(page.locator("#jobs tbody tr")).to_contain_text("no-such-job")
    expect(page.locator("#jobs tbody tr")).to_contain_text("UNIMPLEMENTED")


def test_nothing_uploaded_is_logged(page: Page, fake_web: Web,
                                    caplog: pytest.LogCaptureFixture) -> None:
    image = ham10000_image()
    with caplog.at_level(logging.DEBUG):
        upload(page, fake_web, image)
        expect(page.locator(".result meter")).to_have_count(7)
    text = caplog.text
    assert "POST /api/analyze 200" in text  # the access log is there
    assert image.name not in text
    assert image.read_bytes()[:64].hex() not in text
    assert repr(image.read_bytes()[:32])[2:-1] not in text
