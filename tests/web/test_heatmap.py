"""The page on the real embedded backend and tiny real SavedModels exported with the `explain`
signature (tests/conftest.py): a HAM10000 image shows seven bars and its heatmap overlay, the
toggle switches between the overlay and the image, and the keyboard reaches every control in
order, each with an accessible name. Version 1 of a second base is exported without the
signature: the page still classifies and says why there is no heatmap."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.batching import MicroBatcher
from tests.conftest import TINY_MODEL_NAME, tiny_config
from tests.web.conftest import Web, running_web
from tests.web.test_page import accessible_controls, expect_tab_order, ham10000_image, upload

LOAD_TIMEOUT_S = 120.0  # seconds for the embedded backend to load the tiny versions


def serve_base(base: Path) -> Iterator[Web]:
    backend = EmbeddedBackend(base, TINY_MODEL_NAME, poll_interval_s=60.0)
    backend.start()
    batcher = MicroBatcher(backend)
    try:
        with running_web(batcher) as web:
            yield web
    finally:
        batcher.close()


@pytest.fixture(scope="module")
def explaining_web(tiny_model_template: Path) -> Iterator[Web]:
    yield from serve_base(tiny_model_template)


@pytest.fixture(scope="module")
def unexplained_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    from dermserve.trainer.export import export_tiny_version

    base = tmp_path_factory.mktemp("unexplained")
    export_tiny_version(base / TINY_MODEL_NAME / "1", tiny_config(1), seed=1, explain=False)
    yield from serve_base(base)


def test_a_ham10000_image_shows_seven_bars_and_its_heatmap(page: Page,
                                                           explaining_web: Web) -> None:
    upload(page, explaining_web, ham10000_image())
    result = page.locator(".result")
    expect(result.locator("meter")).to_have_count(7)
    overlay = result.get_by_role("img", name=re.compile("^Heatmap of where the model saw"))
    expect(overlay).to_have_attribute("src", re.compile("^data:image/png;base64,"))
    expect(result.locator(".explain-note")).to_contain_text("the regions that most raised")
    # Drawn over the upload at its own size (a 600x450 HAM10000 photo), not the model's 32x32.
    with Image.open(ham10000_image()) as photo:
        expected = list(photo.size)
    assert overlay.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]") == \
        expected


def test_the_toggle_switches_between_the_overlay_and_the_image(page: Page,
                                                               explaining_web: Web) -> None:
    upload(page, explaining_web, ham10000_image())
    toggle = page.get_by_role("checkbox", name="Show heatmap overlay")
    picture = page.locator(".result .overlay")
    expect(toggle).to_be_checked()
    toggle.press("Space")
    expect(toggle).not_to_be_checked()
    expect(picture).to_have_attribute("src", re.compile("^blob:"))
    expect(picture).to_have_attribute("alt", "The uploaded image, without the heatmap")
    toggle.press("Space")
    expect(picture).to_have_attribute("src", re.compile("^data:image/png"))


def test_the_keyboard_reaches_every_control_in_order_and_each_has_a_name(
        page: Page, explaining_web: Web) -> None:
    upload(page, explaining_web, ham10000_image())
    expected = [page.get_by_role("link", name="Classify images"),
                page.get_by_role("link", name="Batch jobs"),
                page.get_by_label("Age in years"), page.get_by_label("Sex"),
                page.get_by_label("Body site"),
                page.get_by_label(re.compile("Drop JPEG, PNG or DICOM images")),
                page.get_by_role("checkbox", name="Show heatmap overlay"),
                page.get_by_role("link", name=re.compile("model card"))]
    expect_tab_order(page, expected)
    controls = accessible_controls(page)
    assert ("checkbox", "Show heatmap overlay") in controls
    assert [control for control in controls if not control[1].strip()] == []


def test_a_version_without_the_signature_is_classified_without_a_heatmap(
        page: Page, unexplained_web: Web) -> None:
    upload(page, unexplained_web, ham10000_image())
    expect(page.locator(".result meter")).to_have_count(7)
    expect(page.locator(".explain-note")).to_have_text(
        "No heatmap: this model version was exported without explanations.")
    expect(page.get_by_role("checkbox", name="Show heatmap overlay")).to_be_disabled()
