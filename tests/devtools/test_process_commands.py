"""The one way the dev tools start a program (devtools/stack/process.py): each command line it
builds is one its program's own parser accepts with the values given, so a flag renamed in a
program fails here rather than in a benchmark or the attack suite; and the environment a child
gets."""

from __future__ import annotations

import sys
from pathlib import Path

from dermserve.service.settings import Settings
from dermserve.web.settings import WebSettings
from dermserve.worker.settings import parse_settings
from devtools.stack.process import (
    FRONT_MODULE,
    WEB_MODULE,
    WORKER_MODULE,
    child_environment,
    front_command,
    web_command,
    worker_command,
)

MODELS = Path("/srv/models")


def flags(command: list[str], module: str) -> list[str]:
    assert command[:3] == [sys.executable, "-m", module]
    return command[3:]


def test_the_front_command_is_what_the_front_parses() -> None:
    command = front_command("127.0.0.1:5005", MODELS, "ham10000", "--log-level", "WARNING",
                            metrics_port=9999)
    settings = Settings.from_sources(flags(command, FRONT_MODULE), {})
    assert (settings.listen_address, settings.metrics_port, settings.log_level) == (
        "127.0.0.1:5005", 9999, "WARNING")
    assert (settings.model_base, settings.model_name) == (MODELS, "ham10000")
    assert settings.backend == "embedded"


def test_the_worker_command_is_what_the_worker_parses() -> None:
    command = worker_command(MODELS, "ham10000", metrics_port=9465)
    settings = parse_settings(flags(command, WORKER_MODULE), {})
    assert (settings.model_base, settings.model_name) == (MODELS, "ham10000")
    assert settings.worker_metrics_port == 9465
    assert worker_command(MODELS, "m", module="tests.worker.hold")[2] == "tests.worker.hold"


def test_the_page_command_is_what_the_page_parses() -> None:
    command = web_command("127.0.0.1:8081", "127.0.0.1:5005", "--operator-group", "ops")
    settings = WebSettings.from_sources(flags(command, WEB_MODULE), {})
    assert (settings.listen_address, settings.connection.target) == ("127.0.0.1:8081",
                                                                     "127.0.0.1:5005")


def test_a_child_inherits_the_environment_unless_it_runs_on_its_own_settings() -> None:
    environ = {"PATH": "/bin", "DERMSERVE_TOKEN": "caller's", "TF_CPP_MIN_LOG_LEVEL": "0"}
    inherited = child_environment({"DERMSERVE_REDIS_URL": "redis://x"}, environ=environ)
    assert inherited == {"PATH": "/bin", "DERMSERVE_TOKEN": "caller's",
                         "TF_CPP_MIN_LOG_LEVEL": "2", "DERMSERVE_REDIS_URL": "redis://x"}
    own = child_environment({"DERMSERVE_REDIS_URL": "redis://x"}, own_settings=True,
                            environ=environ)
    assert own == {"PATH": "/bin", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "DERMSERVE_REDIS_URL": "redis://x"}
