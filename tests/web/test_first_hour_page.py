"""The page reads for a clinician (issue 30) in headless Chromium, against the real web server and
front over a FakeBackend whose version records thresholds and explains: "Result" and "Needs
review" headlines, the low-confidence and borderline cues, the OOD score's meaning, the heatmap
drawn over the uploaded image at its own proportions, and a status line that counts classified,
abstained and rejected images. Screenshots go to var/artefacts/ for a person to read."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from dermserve.cli.reading import BORDERLINE_MARGIN, LOW_CONFIDENCE_CUE
from dermserve.core.backends.base import ExplainOutput, ModelRef
from dermserve.core.model_config import AbstentionRule
from tests.service.conftest import ThresholdBackend, probability_row
from tests.web.conftest import Web, running_web
from tests.web.test_page import TEXT_AS_JPEG, upload

ARTEFACTS = Path("var/artefacts")
CLASSIFY_JS = Path(__file__).resolve().parents[2] / "dermserve/web/static/classify.js"
class ExplainingFake(ThresholdBackend):
    """A ThresholdBackend whose heatmap, 4x4, is hot in its top-left corner."""
    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None, context: object = None) -> ExplainOutput:
        output = self.predict(ref, images, timeout)
        heat = np.zeros((len(images), 4, 4), np.float32)
        heat[:, 0, 0] = 1.0
        top = output.probabilities.argmax(axis=1).astype(np.int32)
        return ExplainOutput(output.version, output.probabilities, output.ood_scores, heat,
                             np.where(class_indices < 0, top, class_indices))


def wide_jpeg(width: int = 300, height: int = 150) -> dict[str, object]:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 0] = np.linspace(60, 200, width, dtype=np.uint8)[None, :]
    pixels[:, :, 1] = 90
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return {"name": "wide.jpg", "mimeType": "image/jpeg", "buffer": buffer.getvalue()}


@pytest.fixture
def borderline_web() -> Iterator[Web]:
    """The review's case: 41% vasc on top, melanoma 0.161 just under its threshold 0.165."""
    with running_web(ExplainingFake(probability_row(vasc=0.41, mel=0.161),
                                    AbstentionRule(min_confidence=0.3, max_ood_score=50.0))) as web:
        yield web


def screenshot(page: Page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / name), full_page=True)


def test_a_borderline_low_confidence_result_reads_as_such(page: Page,
                                                          borderline_web: Web) -> None:
    upload(page, borderline_web, wide_jpeg())
    result = page.locator(".result")
    expect(result.locator(".state")).to_have_text("Result: Vascular lesion (vasc), 41.0%.")
    expect(result.locator(".cue")).to_contain_text("Low confidence: the top probability 41.0% "
                                                   "is under 60.0%; Melanoma has 16.1%")
    expect(result.locator(".operating-point")).to_contain_text(
        "probability 0.161 is below the threshold 0.165 (borderline: within 0.02).")
    expect(result.locator(".ood")).to_have_text(
        "Out-of-distribution score 0.0: typical of the training images (within the version's "
        "threshold).")
    expect(result).not_to_contain_text("Not abstained")
    expect(page.get_by_role("status")).to_have_text(
        "Done: 1 classified, 0 need review (abstained), 0 rejected.")
    screenshot(page, "page-borderline-result.png")


def test_the_heatmap_is_drawn_over_the_upload_at_its_own_proportions(
        page: Page, borderline_web: Web) -> None:
    upload(page, borderline_web, wide_jpeg(300, 150))
    overlay = page.get_by_role("img", name=re.compile("over the uploaded image$"))
    expect(overlay).to_have_attribute("src", re.compile("^data:image/png;base64,"))
    size = overlay.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]")
    assert size == [300, 150]  # not the model's square input
    expect(page.locator(".explain-note")).to_contain_text(
        "Heatmap over the uploaded image, at its own proportions")
    # Hot (red) in the top-left corner, where the fake's heatmap is 1; the cold corner is the
    # photo itself.
    corners = overlay.evaluate("""img => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth;
        c.height = img.naturalHeight; const x = c.getContext('2d'); x.drawImage(img, 0, 0);
        return [Array.from(x.getImageData(2, 2, 1, 1).data),
                Array.from(x.getImageData(img.naturalWidth - 3, img.naturalHeight - 3, 1, 1).data)];
    }""")
    hot, cold = corners
    # 60% of the map's red (200, 0, 0) over the photo's (60, 90, 0) there: (144, 36, 0).
    assert hot[0] > 120 and hot[1] < 60
    assert abs(cold[1] - 90) < 25  # the photo's green channel, barely tinted
    screenshot(page, "page-heatmap-wide.png")


def test_an_abstention_is_needs_review_and_unlike_the_training_images(page: Page) -> None:
    with running_web(ExplainingFake(probability_row(nv=0.8),
                                    AbstentionRule(min_confidence=0.3, max_ood_score=-1.0))) as web:
        upload(page, web, wide_jpeg())
        result = page.locator(".result")
        expect(result.locator(".state")).to_contain_text("Needs review: The image does not look "
                                                         "like the dermatoscopic images")
        expect(result.locator(".ood")).to_contain_text("unlike the training images")
        expect(result.locator(".cue")).to_be_hidden()
        expect(page.get_by_role("status")).to_have_text(
            "Done: 0 classified, 1 need review (abstained), 0 rejected.")
        screenshot(page, "page-needs-review.png")


def test_two_rejected_images_are_counted_as_rejected(page: Page, borderline_web: Web) -> None:
    upload(page, borderline_web,
           {"name": "a.jpg", "mimeType": "image/jpeg", "buffer": TEXT_AS_JPEG},
           {"name": "b.jpg", "mimeType": "image/jpeg", "buffer": TEXT_AS_JPEG})
    expect(page.get_by_role("status")).to_have_text(
        "Done: 0 classified, 0 need review (abstained), 2 rejected.")
    screenshot(page, "page-two-rejected.png")


def test_the_pages_levels_are_the_clis() -> None:
    script = CLASSIFY_JS.read_text(encoding="utf-8")
    levels = {name: float(value) for name, value in
              re.findall(r"const (LOW_CONFIDENCE_CUE|BORDERLINE_MARGIN) = ([0-9.]+);", script)}
    assert levels == {"LOW_CONFIDENCE_CUE": LOW_CONFIDENCE_CUE,
                      "BORDERLINE_MARGIN": BORDERLINE_MARGIN}
