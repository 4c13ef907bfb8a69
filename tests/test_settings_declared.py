"""Every entry point builds its settings one way (dermserve/core/config.py): one declaration gives
the flag, the variable and the --help line; the front and the worker share the model, backend, image
and Redis groups, so a variable means the same in both."""

from __future__ import annotations

import pytest

from dermserve.batch.settings import BatchApiSettings
from dermserve.core import config
from dermserve.core.settings import ServingSettings
from dermserve.service.settings import Settings
from dermserve.service.settings import build_parser as front_parser
from dermserve.web.settings import WebSettings
from dermserve.worker.settings import WorkerSettings, parse_settings
from dermserve.worker.settings import build_parser as worker_parser


def web_parser(environ: dict[str, str]) -> object:
    return config.build_parser(WebSettings, environ, "dermserve-web", "")


@pytest.mark.parametrize("cls, parser", [(Settings, front_parser),
                                         (WorkerSettings, worker_parser),
                                         (WebSettings, web_parser)])
def test_help_lists_every_setting_with_its_default_and_variable(cls: type, parser: object
                                                                ) -> None:
    text = " ".join(parser({}).format_help().split())  # type: ignore[operator]
    for option in config.options(cls):
        assert option.flag in text
        assert f"env {option.env}" in text, option.env
        shown = config.show_default(option.default) if option.declaration.show is None else ""
        assert f"default {shown}" in text, option.flag
        if option.path[-1].endswith("_s"):
            assert f"{option.flag} " in text and "seconds" in text


def test_the_shared_groups_read_the_same_variables_with_the_same_defaults() -> None:
    front = {o.env: o.default for o in config.options(Settings)}
    worker = {o.env: o.default for o in config.options(WorkerSettings)}
    shared = config.env_names(ServingSettings) | config.env_names(BatchApiSettings)
    assert shared <= front.keys() & worker.keys()
    assert {name: front[name] for name in shared} == {name: worker[name] for name in shared}
    # One meaning per variable: the worker's per-call deadline has its own name now.
    assert front["DERMSERVE_BACKEND_TIMEOUT_S"] == worker["DERMSERVE_BACKEND_TIMEOUT_S"]
    assert "DERMSERVE_CLASSIFY_TIMEOUT_S" in worker


def test_flags_win_over_variables_over_defaults() -> None:
    env = {"DERMSERVE_CHUNK_SIZE": "16", "DERMSERVE_MODEL_NAME": "from-env"}
    settings = parse_settings(["--model-name", "from-flag"], env)
    assert settings.chunk_size == 16
    assert settings.model_name == "from-flag"


def test_a_bad_variable_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([], {"DERMSERVE_CHUNK_SIZE": "many"})
    assert "DERMSERVE_CHUNK_SIZE" in capsys.readouterr().err


@pytest.mark.parametrize("argv, env, hosts", [
    ([], {}, False),
    ([], {"DERMSERVE_REDIS_URL": "redis://127.0.0.1:1/0"}, True),
    (["--redis-url=redis://127.0.0.1:1/0"], {}, True),
    (["--batch-jobs", "off"], {"DERMSERVE_REDIS_URL": "redis://127.0.0.1:1/0"}, False),
    (["--batch-jobs", "on"], {}, True),
])
def test_hosting_batch_jobs_in_the_front_is_a_setting(argv: list[str], env: dict[str, str],
                                                      hosts: bool) -> None:
    assert Settings.from_sources(argv, env).hosts_batch_jobs is hosts


def test_secrets_stay_out_of_help_and_repr() -> None:
    env = {"DERMSERVE_REDIS_URL": "redis://:hunter2@redis:6379/0",
           "DERMSERVE_AUTH_TOKEN": "t0k3n"}
    assert "hunter2" not in front_parser(env).format_help()
    assert "t0k3n" not in front_parser(env).format_help()
    settings = Settings.from_sources([], env)
    assert "hunter2" not in repr(settings) and "t0k3n" not in repr(settings)


def test_the_web_page_reads_the_clis_connection_and_the_fronts_image_limit() -> None:
    web = {o.env: o.default for o in config.options(WebSettings)}
    front = {o.env: o.default for o in config.options(Settings)}
    assert web["DERMSERVE_MAX_IMAGE_BYTES"] == front["DERMSERVE_MAX_IMAGE_BYTES"]
    assert {"DERMSERVE_TARGET", "DERMSERVE_TOKEN", "DERMSERVE_TLS_CA", "DERMSERVE_TLS_CERT",
            "DERMSERVE_TLS_KEY"} <= web.keys()
    # Its own address has its own variable: one environment can configure the front and the page.
    assert "DERMSERVE_LISTEN" not in web and "DERMSERVE_WEB_LISTEN" in web


def test_a_setting_has_one_name_and_no_deprecated_alias() -> None:
    """0.1.0 keeps no renamed flags: the worker's old `--batch-size` is an unknown flag."""
    with pytest.raises(SystemExit):
        parse_settings(["--batch-size", "3"], {})
    assert not any(field.startswith("alias") for field in config.Declaration.__dataclass_fields__)
