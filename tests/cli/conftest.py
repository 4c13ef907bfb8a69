"""The CLI's tests run it against a real front on a fake backend (tests/service/conftest.py)."""

from tests.service.conftest import context_server, fake_backend, fake_server  # noqa: F401 (fixtures)
