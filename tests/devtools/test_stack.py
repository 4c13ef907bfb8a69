"""`make run`'s choice of model base, and the web page it starts beside the front."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from devtools.stack.launcher import choose_model_base


def args(model_base: Path, demo_base: Path) -> argparse.Namespace:
    return argparse.Namespace(model_base=model_base, demo_base=demo_base, model_name="ham10000")


def test_the_released_model_is_served_when_present(tmp_path: Path) -> None:
    released = tmp_path / "models"
    (released / "ham10000" / "3").mkdir(parents=True)
    (released / "ham10000" / "3" / "saved_model.pb").touch()  # presence is what is checked
    assert choose_model_base(args(released, tmp_path / "demo")) == released


def test_the_placeholder_is_served_loudly_otherwise(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    released = tmp_path / "models"
    (released / "ham10000" / "tmp-publish").mkdir(parents=True)  # half-published: not a version
    with caplog.at_level(logging.WARNING):
        chosen = choose_model_base(args(released, tmp_path / "demo"))
    assert chosen == tmp_path / "demo"
    assert "UNTRAINED PLACEHOLDER" in caplog.text


def test_the_stack_starts_the_web_page_as_a_client_of_its_front() -> None:
    from dermserve.web.settings import WebSettings
    from devtools.stack.launcher import web_child

    process = web_child(argparse.Namespace(listen="127.0.0.1:50051",
                                           web_listen="127.0.0.1:8080"))
    assert process.command[1:3] == ["-m", "dermserve.web"]
    settings = WebSettings.from_sources(process.command[3:], {})
    assert (settings.listen_address, settings.connection.target) == ("127.0.0.1:8080",
                                                                   "127.0.0.1:50051")
