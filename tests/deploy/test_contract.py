"""The manifests configure the code that will run in them: every flag and DERMSERVE_* variable is
one that the real parsers read, every port they name is the one the code binds, and every path they
name is mounted. The parsers are imported, never re-listed here, so the check cannot drift."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from dermserve.core import config
from dermserve.core import defaults as core_defaults
from dermserve.service import settings as service_settings
from dermserve.trainer import cli as trainer_cli
from dermserve.trainer import settings as trainer_settings
from dermserve.worker import settings as worker_settings
from tests.deploy.conftest import DEPLOY, Rendered

ENV_PREFIX = "DERMSERVE_"


def container(rendered: Rendered, kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    workload = rendered.get(kind, name)
    spec = (workload["spec"]["jobTemplate"]["spec"]["template"]["spec"] if kind == "CronJob"
            else workload["spec"]["template"]["spec"])
    (main,) = spec["containers"]
    return spec, main


def literal_env(main: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}


def parse_or_fail(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """argparse exits on an unknown flag or a bad value; turn that into a readable failure."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{parser.prog} rejects the manifest's args {args}:\n{errors.getvalue()}")


def container_port(main: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert name in ports, f"container {main['name']} has no port named {name}"
    return int(ports[name])


def mount_covering(spec: dict[str, Any], main: dict[str, Any], path: PurePosixPath
                   ) -> dict[str, Any]:
    """The volume mount under which `path` lies (the longest match)."""
    mounts = [m for m in main["volumeMounts"]
              if path == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in
              path.parents]
    assert mounts, f"{path} is on no volume of container {main['name']}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def service_port(rendered: Rendered, name: str, port: int) -> dict[str, Any]:
    service = rendered.get("Service", name)
    matches = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert matches, f"Service {name} has no port {port}"
    return matches[0]


def host_port(target: str) -> tuple[str, int]:
    """'dns:///tfserving:8500' or 'tfserving:8500' -> ('tfserving', 8500)."""
    address = target.split("///", 1)[-1]
    host, _, port = address.rpartition(":")
    return host, int(port)


def service_env_names() -> set[str]:
    return config.env_names(service_settings.Settings)


def worker_env_names() -> set[str]:
    return config.env_names(worker_settings.WorkerSettings)


# --- the front service ---
def server_namespace(rendered: Rendered) -> tuple[argparse.Namespace, dict[str, Any],
                                                   dict[str, Any]]:
    spec, main = container(rendered, "Deployment", "dermserve-server")
    assert main["command"] == ["dermserve-server"]
    parser = service_settings.build_parser(literal_env(main))
    return parse_or_fail(parser, main["args"]), spec, main


def server_settings(rendered: Rendered) -> tuple[service_settings.Settings, dict[str, Any],
                                                  dict[str, Any]]:
    namespace, spec, main = server_namespace(rendered)
    return service_settings.Settings.from_namespace(namespace), spec, main


def test_server_flags_parse_and_bind_the_declared_ports(rendered: Rendered) -> None:
    settings, _, main = server_settings(rendered)
    host, port = host_port(settings.listen_address)
    assert host == "0.0.0.0", "the server must listen on every pod address"
    assert port == container_port(main, "grpc")
    assert settings.metrics_address == "0.0.0.0"
    assert settings.metrics_port == container_port(main, "metrics")
    service = rendered.get("Service", "dermserve-server")
    assert [p["port"] for p in service["spec"]["ports"]] == [port]


def test_server_probes_reach_a_plaintext_health_port(rendered: Rendered) -> None:
    """kubelet gRPC probes cannot speak TLS, so with TLS on, the probes must target a port that the
    server serves grpc.health.v1 on without TLS (--health-listen)."""
    settings, _, main = server_settings(rendered)
    assert settings.security.tls_enabled
    server_namespace(rendered)  # fails while --health-listen is unknown
    health_listen = settings.health_listen_address
    assert health_listen, "TLS is on and dermserve/service/settings.py has no plaintext health port"
    _, health_port = host_port(health_listen)
    assert health_port != host_port(settings.listen_address)[1]
    assert health_port == container_port(main, "health")
    for key in ("startupProbe", "readinessProbe"):
        assert main[key]["grpc"]["port"] == health_port
    assert main["livenessProbe"]["tcpSocket"]["port"] == "health"


def test_server_uses_tfserving_with_tls_and_auth(rendered: Rendered) -> None:
    settings, spec, main = server_settings(rendered)
    assert settings.backend == "tfserving"
    host, port = host_port(settings.tfserving_target)
    assert service_port(rendered, host, port)["targetPort"] == "grpc"
    tfserving_config = models_config(rendered)
    assert settings.model_name in {c.name for c in tfserving_config.model_config_list.config}
    security = settings.security
    assert security.tls_enabled and security.auth_enabled
    for path in (security.tls_cert, security.tls_key, security.auth_tokens_file):
        assert path is not None
        mount = mount_covering(spec, main, PurePosixPath(path))
        volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
        assert "secret" in volume, f"{path} is not mounted from a Secret"
        secret = rendered.get("Secret", volume["secret"]["secretName"]) \
            if rendered.overlay == "dev" else None
        if secret is not None:  # prod expects the Secrets to be created out of band
            assert PurePosixPath(path).name in secret["data"]


def test_server_drains_within_the_termination_grace_period(rendered: Rendered) -> None:
    settings, spec, main = server_settings(rendered)
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + settings.grace_period_s < spec["terminationGracePeriodSeconds"]


def test_server_env_is_read_by_the_code(rendered: Rendered) -> None:
    """The front reads its own flags' variables, and the BatchJobs API reads the worker's."""
    _, main = container(rendered, "Deployment", "dermserve-server")
    ours = {k for k in literal_env(main) if k.startswith(ENV_PREFIX)}
    unknown = ours - service_env_names() - worker_env_names()
    assert not unknown, f"no code reads {sorted(unknown)}"


# --- the worker ---
def worker_config(rendered: Rendered) -> tuple[worker_settings.WorkerSettings, dict[str, Any],
                                                dict[str, Any]]:
    spec, main = container(rendered, "Deployment", "dermserve-worker")
    assert main["command"] == ["dermserve-worker"]
    env = literal_env(main)
    parse_or_fail(worker_settings.build_parser(env),
                  main["args"])
    return worker_settings.parse_settings(main["args"], env), spec, main


def test_worker_flags_parse_and_match_the_cluster(rendered: Rendered) -> None:
    settings, spec, main = worker_config(rendered)
    assert settings.backend == "tfserving"
    host, port = host_port(settings.tfserving_target)
    assert service_port(rendered, host, port)["targetPort"] == "grpc"
    redis = urlsplit(settings.redis_url)
    assert redis.hostname is not None and redis.port is not None
    assert service_port(rendered, redis.hostname, redis.port)["targetPort"] == "redis"
    assert settings.worker_metrics_address == "0.0.0.0"
    assert settings.worker_metrics_port == container_port(main, "metrics")
    for root in settings.input_roots:
        assert mount_covering(spec, main, PurePosixPath(root)).get("readOnly") is True
    assert not mount_covering(spec, main, PurePosixPath(settings.batch_output_dir)).get("readOnly")


def test_worker_outlives_its_chunk_timeout(rendered: Rendered) -> None:
    settings, spec, _ = worker_config(rendered)
    assert spec["terminationGracePeriodSeconds"] > settings.chunk_timeout_s


def test_worker_startup_probe_outlasts_the_model_wait(rendered: Rendered) -> None:
    """The worker opens its metrics port only after a model version answers."""
    settings, _, main = worker_config(rendered)
    probe = main["startupProbe"]
    assert probe["tcpSocket"]["port"] == "metrics"
    assert probe["periodSeconds"] * probe["failureThreshold"] > settings.model_ready_timeout_s


def test_worker_env_is_read_by_the_code(rendered: Rendered) -> None:
    _, main = container(rendered, "Deployment", "dermserve-worker")
    ours = {k for k in literal_env(main) if k.startswith(ENV_PREFIX)}
    assert not ours - worker_env_names(), f"no code reads {sorted(ours - worker_env_names())}"


def test_front_and_workers_agree_on_the_batch_settings(rendered: Rendered) -> None:
    """The BatchJobs API (in the front) and the workers must share Redis, queues and paths."""
    workers, _, _ = worker_config(rendered)
    _, main = container(rendered, "Deployment", "dermserve-server")
    front = worker_settings.settings_from_env(literal_env(main))
    for name in ("redis_url", "key_prefix", "queue_name", "input_roots", "batch_output_dir"):
        assert getattr(front, name) == getattr(workers, name), name


# --- TF Serving ---
def config_file(rendered: Rendered, flag: str) -> str:
    """The text of the ConfigMap file that TF Serving's `--flag=path` points at."""
    spec, main = container(rendered, "Deployment", "tfserving")
    (path,) = [a.split("=", 1)[1] for a in main["args"] if a.startswith(f"--{flag}=")]
    mount = mount_covering(spec, main, PurePosixPath(path))
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    config_map = rendered.get("ConfigMap", volume["configMap"]["name"])
    key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    text: str = config_map["data"][key]
    return text


def models_config(rendered: Rendered) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(config_file(rendered, "model_config_file"),
                             model_server_config_pb2.ModelServerConfig())


def tfserving_flags(rendered: Rendered) -> dict[str, str]:
    _, main = container(rendered, "Deployment", "tfserving")
    assert main["command"] == ["/usr/bin/tensorflow_model_server"]
    return dict(arg.removeprefix("--").split("=", 1) for arg in main["args"])


def test_tfserving_ports_and_files(rendered: Rendered) -> None:
    _, main = container(rendered, "Deployment", "tfserving")
    flags = tfserving_flags(rendered)
    assert int(flags["port"]) == container_port(main, "grpc")
    assert int(flags["rest_api_port"]) == container_port(main, "http")
    assert flags["enable_batching"] == "true"


def test_tfserving_model_config_serves_the_model_volume(rendered: Rendered) -> None:
    spec, main = container(rendered, "Deployment", "tfserving")
    (model,) = models_config(rendered).model_config_list.config
    assert model.name == core_defaults.DEFAULT_MODEL_NAME
    mount = mount_covering(spec, main, PurePosixPath(model.base_path))
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "dermserve-models"
    assert PurePosixPath(model.base_path).name == model.name
    labels = dict(model.version_labels)
    assert set(labels) == {"stable", "canary"}
    assert set(labels.values()) <= set(model.model_version_policy.specific.versions)
    for probe in ("startupProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["path"] == f"/v1/models/{model.name}"


def test_tfserving_batches_like_the_front(rendered: Rendered) -> None:
    batching = config_file(rendered, "batching_parameters_file")
    fields = dict(re.findall(r"^(\w+)\s*\{\s*value:\s*(\d+)\s*\}", batching, re.M))
    assert set(fields) >= {"max_batch_size", "batch_timeout_micros", "num_batch_threads"}
    settings, _, _ = server_settings(rendered)
    assert int(fields["max_batch_size"]) == settings.batching.max_size


# --- the trainer ---
def test_trainer_publishes_into_the_model_volume(rendered: Rendered) -> None:
    spec, main = container(rendered, "CronJob", "dermserve-train")
    assert main["command"] == ["dermserve-train"]
    namespace = parse_or_fail(trainer_cli.build_parser(literal_env(main)), main["args"])
    settings = trainer_cli.settings_from(namespace)
    (model,) = models_config(rendered).model_config_list.config
    model_base = PurePosixPath(settings.model_base)
    assert model_base / settings.model_name == PurePosixPath(model.base_path)
    assert not mount_covering(spec, main, model_base).get("readOnly")
    assert settings.data_dir is not None and settings.weights_path is not None
    for path in (settings.data_dir, settings.weights_path):
        assert mount_covering(spec, main, PurePosixPath(path))["readOnly"] is True
    assert not mount_covering(spec, main, PurePosixPath(settings.workdir)).get("readOnly")
    assert settings.threads == int(main["resources"]["requests"]["cpu"])


def test_trainer_env_is_read_by_the_code(rendered: Rendered) -> None:
    _, main = container(rendered, "CronJob", "dermserve-train")
    known = config.env_names(trainer_settings.TrainSettings)
    ours = {k for k in literal_env(main) if k.startswith(ENV_PREFIX)}
    assert not ours - known, f"no code reads {sorted(ours - known)}"


def iter_dermserve_containers(rendered: Rendered) -> Iterator[dict[str, Any]]:
    for _, spec in rendered.pod_specs():
        for main in spec["containers"]:
            if main.get("command", [""])[0].startswith("dermserve"):
                yield main


def test_every_dermserve_container_runs_a_declared_console_script(rendered: Rendered) -> None:
    import tomllib

    scripts = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["scripts"]
    commands = {main["command"][0] for main in iter_dermserve_containers(rendered)}
    assert commands == {"dermserve-server", "dermserve-worker", "dermserve-train", "dermserve-web"}
    assert commands <= set(scripts)

