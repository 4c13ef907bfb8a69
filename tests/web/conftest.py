"""Fixtures for the web page: the real front (tests/service/conftest.py's server over a backend),
the real web server on 127.0.0.1:0 in front of it, and Debian's headless Chromium driven by
Playwright (`make install` installs it; no browser is ever downloaded)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from dermserve.client.connection import ConnectionSettings
from dermserve.core.backends.base import Backend
from dermserve.service.metrics import Metrics
from dermserve.service.server import ServiceAdder, create_server
from dermserve.service.settings import Settings
from dermserve.web.front import FrontClient
from dermserve.web.server import WebServer, create_web_server
from dermserve.web.settings import WebSettings
from devtools.bench.web_page import launch_chromium
from tests.service.conftest import FakeBackend, server_settings
from tests.worker.conftest import input_root, redis_server, settings  # noqa: F401 (fixtures)

WAIT_MS = 30_000  # milliseconds any page wait may take, at most (a cold model's first answer)


@dataclass
class Web:
    server: WebServer
    url: str
    front_port: int


def web_settings(front_port: int, **changes: object) -> WebSettings:
    """The page's settings before a front on `front_port`; `changes` may name connection
    settings (token, tls_ca, ...) beside the page's own."""
    names = {item.name for item in fields(ConnectionSettings)}
    connection = replace(ConnectionSettings(target=f"127.0.0.1:{front_port}"),
                         **{k: v for k, v in changes.items() if k in names})  # type: ignore[arg-type]
    base = WebSettings(listen_address="127.0.0.1:0", connection=connection)
    return replace(base, **{k: v for k, v in changes.items()  # type: ignore[arg-type]
                            if k not in names})


@contextmanager
def running_web(backend: Backend, extra_services: Sequence[tuple[str, ServiceAdder]] = (),
                front_settings: Settings | None = None,
                client_class: type[FrontClient] = FrontClient,
                **changes: object) -> Iterator[Web]:
    """The real front over `backend` (hosting `extra_services` too; `front_settings`, else the
    test defaults) and the real web server before it (`changes` to its settings) through a
    `client_class`; both stopped on exit."""
    front, front_port = create_server(front_settings or server_settings(), backend, Metrics(),
                                      extra_services)
    front.start()
    page_settings = web_settings(front_port, **changes)
    client = client_class(page_settings)
    server, port = create_web_server(page_settings, client)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Web(server, f"http://127.0.0.1:{port}", front_port)
    finally:
        server.shutdown()
        server.server_close()
        client.close()
        thread.join()
        front.stop(0.5)


@pytest.fixture
def fake_web() -> Iterator[Web]:
    with running_web(FakeBackend()) as web:
        yield web


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    expect.set_options(timeout=WAIT_MS)  # expect's own default (5 s) is short on busy CPUs
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = launch_chromium(playwright)  # fails with the reason when it is not installed
    yield launched
    launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    yield opened
    context.close()
