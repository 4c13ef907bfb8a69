"""Fixtures for the web page: the real front (tests/service/conftest.py's server over a backend),
the real web server on 127.0.0.1:0 in front of it, and Debian's headless Chromium driven by
Playwright (`make install` installs it; no browser is ever downloaded)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from core.backends.base import Backend
from tests.service.conftest import FakeBackend, Running, running_server
from web.front import FrontClient
from web.server import WebServer, create_web_server
from web.settings import WebSettings

CHROMIUM = "chromium"  # Debian's package and binary name
WAIT_MS = 30_000  # milliseconds any page wait may take, at most (a cold model's first answer)


@dataclass
class Web:
    server: WebServer
    url: str
    front: Running


def web_settings(front_port: int, **changes: object) -> WebSettings:
    base = WebSettings(listen_address="127.0.0.1:0", target=f"127.0.0.1:{front_port}")
    return replace(base, **changes)  # type: ignore[arg-type]


@contextmanager
def running_web(backend: Backend, **changes: object) -> Iterator[Web]:
    """The real front over `backend` and the real web server before it; stopped on exit."""
    with running_server(backend) as front:
        settings = web_settings(front.port, **changes)
        client = FrontClient(settings)
        server, port = create_web_server(settings, client)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield Web(server, f"http://127.0.0.1:{port}", front)
        finally:
            server.shutdown()
            server.server_close()
            client.close()
            thread.join()


@pytest.fixture
def fake_web() -> Iterator[Web]:
    with running_web(FakeBackend()) as web:
        yield web


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which(CHROMIUM)
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run `make install`")
    launched = playwright.chromium.launch(executable_path=executable, headless=True)
    yield launched
    launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    yield opened
    context.close()
