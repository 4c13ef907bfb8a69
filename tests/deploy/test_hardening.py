"""The security properties of the rendered overlays (issue 11, defect 8), one test per property:
Redis answers only TLS clients with a password and admits only the front and the workers; the
front and the workers reach Redis and TF Serving over TLS with secrets mounted from Secrets;
the front demands client certificates; TF Serving's REST port (Predict included) admits no one
but the kubelet. tests/batch/test_redis_security.py runs the same redis.conf and ACL for real."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from dermserve.worker import settings as worker_settings
from tests.deploy.conftest import DEPLOY, Rendered
from tests.deploy.test_contract import (
    container,
    mount_covering,
    server_settings,
    tfserving_flags,
    worker_config,
)

REDIS_PORT = 6379
TFSERVING_GRPC_PORT = 8500
TFSERVING_REST_PORT = 8501


def redis_conf(rendered: Rendered) -> dict[str, str]:
    """The directives of the redis.conf the StatefulSet runs (from its ConfigMap)."""
    spec, main = container(rendered, "StatefulSet", "redis")
    path = PurePosixPath(main["command"][1])
    mount = mount_covering(spec, main, path)
    volume = volumes(spec)[mount["name"]]
    text = rendered.get("ConfigMap", volume["configMap"]["name"])["data"][path.name]
    pairs = (line.split(None, 1) for line in text.splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec["volumes"]}


def secret_key_at(spec: dict[str, Any], main: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path`, failing when it is not mounted from a Secret."""
    mount = mount_covering(spec, main, PurePosixPath(path))
    volume = volumes(spec)[mount["name"]]
    assert "secret" in volume, f"{path} is not mounted from a Secret"
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    if items:
        assert relative in items, f"{path}: the Secret volume does not project {relative}"
    return volume["secret"]["secretName"], items.get(relative, relative)


def assert_secret_file(rendered: Rendered, spec: dict[str, Any], main: dict[str, Any],
                       path: str) -> None:
    name, key = secret_key_at(spec, main, path)
    if rendered.overlay == "dev":  # prod expects the Secrets to be created out of band
        assert key in rendered.get("Secret", name)["data"], (name, key)


# --- Redis ---------------------------------------------------------------------------------------
def test_redis_speaks_tls_only_and_keeps_protected_mode(rendered: Rendered) -> None:
    conf = redis_conf(rendered)
    assert conf["port"] == "0", "the plaintext port must be off"
    assert int(conf["tls-port"]) == REDIS_PORT
    assert conf["protected-mode"] == "yes"
    assert "requirepass" not in conf, "passwords live in the ACL file, from a Secret"
    spec, main = container(rendered, "StatefulSet", "redis")
    for directive in ("tls-cert-file", "tls-key-file", "aclfile"):
        assert_secret_file(rendered, spec, main, conf[directive])


def test_redis_acl_disables_the_default_user_and_administration() -> None:
    lines = (DEPLOY / "overlays" / "dev" / "secrets" / "users.acl").read_text().splitlines()
    users = {line.split()[1]: line.split()[2:] for line in lines if line.startswith("user ")}
    assert len(users) == len(lines), "an ACL file holds `user` lines only"
    assert users["default"][0] == "off" and "nopass" not in users["default"]
    (service,) = [rules for name, rules in users.items() if name != "default"]
    assert "on" in service and "nopass" not in service
    assert "-@admin" in service and "-@dangerous" in service


def test_redis_admits_only_the_front_and_the_workers(rendered: Rendered) -> None:
    peers = ingress_peers(rendered, "redis")
    assert peers == {(("server",), REDIS_PORT), (("worker",), REDIS_PORT)}


def test_redis_clients_use_tls_and_a_password_file(rendered: Rendered) -> None:
    workers, worker_spec, worker_main = worker_config(rendered)
    front_spec, front_main = container(rendered, "Deployment", "dermserve-server")
    front = worker_settings.settings_from_env(
        {e["name"]: e["value"] for e in front_main["env"] if "value" in e})
    for settings, spec, main in ((workers, worker_spec, worker_main),
                                 (front, front_spec, front_main)):
        url = urlsplit(settings.redis_url)
        assert url.scheme == "rediss", settings.redis_url
        assert url.password is None, "no password in a URL: it would be in the manifest"
        assert url.username, "the ACL user, not the disabled default user"
        assert_secret_file(rendered, spec, main, settings.redis_password_file)
        assert_secret_file(rendered, spec, main, settings.redis_ca_cert)


# --- TF Serving ----------------------------------------------------------------------------------
def test_tfserving_grpc_uses_tls_from_a_secret(rendered: Rendered) -> None:
    flags = tfserving_flags(rendered)
    spec, main = container(rendered, "Deployment", "tfserving")
    assert_secret_file(rendered, spec, main, flags["ssl_config_file"])
    settings, front_spec, front_main = server_settings(rendered)
    assert settings.tfserving_ca is not None
    assert_secret_file(rendered, front_spec, front_main, str(settings.tfserving_ca))
    workers, worker_spec, worker_main = worker_config(rendered)
    assert workers.tfserving_ca
    assert_secret_file(rendered, worker_spec, worker_main, str(workers.tfserving_ca))


def test_tfserving_rest_port_admits_no_one_but_the_kubelet(rendered: Rendered) -> None:
    """8501 serves Predict beside the metrics: no policy may open it (the node's kubelet is
    always allowed), and no Service or PodMonitor may point at it."""
    for policy in rendered.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert TFSERVING_REST_PORT not in {p["port"] for p in rule.get("ports", [])}, \
                policy["metadata"]["name"]
    assert ingress_peers(rendered, "tfserving") == {(("server",), TFSERVING_GRPC_PORT),
                                                    (("worker",), TFSERVING_GRPC_PORT)}
    service = rendered.get("Service", "tfserving")
    assert TFSERVING_REST_PORT not in {p["port"] for p in service["spec"]["ports"]}
    for monitor in rendered.of_kind("PodMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        assert labels.get("app.kubernetes.io/component") != "tfserving", monitor["metadata"]


# --- the front -----------------------------------------------------------------------------------
def test_front_requires_client_certificates_and_reloads_credentials(rendered: Rendered) -> None:
    settings, spec, main = server_settings(rendered)
    security = settings.security
    assert security.tls_client_ca is not None, "mutual TLS: --tls-client-ca"
    assert_secret_file(rendered, spec, main, str(security.tls_client_ca))
    assert 0 < security.reload_interval_s <= 60, "rotated Secrets must take effect"


# --- helpers -------------------------------------------------------------------------------------
def ingress_peers(rendered: Rendered, component: str) -> set[tuple[tuple[str, ...], int]]:
    """(components of the peer pods, port) that the policies selecting `component` admit; a peer
    that is not a same-namespace pod selector is an assertion failure."""
    found: set[tuple[tuple[str, ...], int]] = set()
    for policy in rendered.of_kind("NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], component):
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, (policy["metadata"]["name"], peer)
                labels = peer["podSelector"]["matchLabels"]
                found |= {((labels["app.kubernetes.io/component"],), port["port"])
                          for port in rule["ports"]}
    return found


def selects(selector: dict[str, Any], component: str) -> bool:
    """Whether a dermserve pod selector selects `component`'s pods (the empty selector of the
    default-deny policy selects all, but that policy admits nothing)."""
    labels = selector.get("matchLabels", {})
    if labels.get("app.kubernetes.io/component", component) != component:
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["key"] == "app.kubernetes.io/component", expression
        assert expression["operator"] in ("In", "NotIn"), expression
        if (component in expression["values"]) != (expression["operator"] == "In"):
            return False
    return True
