"""Settings from flags over DERMSERVE_* variables over defaults; nothing read at import."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermserve.core import defaults as core_defaults
from dermserve.service.settings import Settings


def test_defaults_are_loopback_and_off() -> None:
    settings = Settings.from_sources([], {})
    assert settings.listen_address == "127.0.0.1:50051"
    assert (settings.metrics_address, settings.metrics_port) == ("127.0.0.1", 9464)
    assert not settings.security.auth_enabled and not settings.security.tls_enabled
    assert settings.batching.enabled
    assert settings.limits.max_bytes == core_defaults.DEFAULT_MAX_IMAGE_BYTES
    assert settings.max_message_bytes > settings.limits.max_bytes


def test_environment_then_flags_override() -> None:
    env = {"DERMSERVE_LISTEN": "0.0.0.0:6000", "DERMSERVE_BATCH_MAX_SIZE": "8",
           "DERMSERVE_VERSION_LABELS": "stable=3,canary=4", "DERMSERVE_BATCHING": "off",
           "DERMSERVE_AUTH_TOKEN": "t0k", "DERMSERVE_TLS_CERT": "/etc/tls/crt"}
    settings = Settings.from_sources(["--batch-max-size", "16", "--backend", "tfserving"], env)
    assert settings.listen_address == "0.0.0.0:6000"
    assert settings.batching.max_size == 16
    assert not settings.batching.enabled
    assert settings.backend == "tfserving"
    assert dict(settings.version_labels) == {"stable": 3, "canary": 4}
    assert settings.security.auth_enabled and settings.security.tls_cert == Path("/etc/tls/crt")
    assert "t0k" not in repr(settings)


@pytest.mark.parametrize("argv, env", [
    (["--backend", "onnx"], {}),
    ([], {"DERMSERVE_METRICS_PORT": "many"}),
    ([], {"DERMSERVE_VERSION_LABELS": "stable"}),
])
def test_bad_values_are_refused(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_sources(argv, env)
