"""The web page's manifests agree with its code and with the design: its flags parse with
dermserve/web/settings.py's parser, its probes reach the routes dermserve/web/server.py serves, its
credentials come from a Secret, it may reach only the front's gRPC port (and DNS), only the Ingress
controller may reach it, and the example Ingress routes to its Service."""

from __future__ import annotations

import base64
import threading
import urllib.error
import urllib.request
from typing import Any

from dermserve.client.connection import ConnectionSettings
from dermserve.core import config
from dermserve.service.auth import TokenTable
from dermserve.web.front import FrontClient
from dermserve.web.server import create_web_server
from dermserve.web.settings import WebSettings
from tests.deploy.conftest import Rendered
from tests.deploy.test_contract import container, container_port, host_port, parse_or_fail
from tests.deploy.test_hardening import assert_secret_file, selects

WEB = {"app.kubernetes.io/name": "dermserve", "app.kubernetes.io/component": "web"}
SERVER = {"app.kubernetes.io/name": "dermserve", "app.kubernetes.io/component": "server"}


def selects_web(policy: dict[str, Any]) -> bool:
    return selects(policy["spec"]["podSelector"], "web") and bool(policy["spec"]["podSelector"])


def selects_server(policy: dict[str, Any]) -> bool:
    return selects(policy["spec"]["podSelector"], "server") and bool(policy["spec"]["podSelector"])


def web_settings(rendered: Rendered) -> tuple[WebSettings, dict[str, Any], dict[str, Any]]:
    spec, main = container(rendered, "Deployment", "dermserve-web")
    parser = config.build_parser(WebSettings, {}, "dermserve-web", "")
    namespace = parse_or_fail(parser, main["args"])
    return config.assemble(WebSettings, vars(namespace)), spec, main


def test_web_flags_parse_bind_the_http_port_and_target_the_front(rendered: Rendered) -> None:
    settings, _, main = web_settings(rendered)
    assert host_port(settings.listen_address)[1] == container_port(main, "http")
    front_host, front_port = host_port(settings.connection.target)
    front = rendered.get("Service", front_host)
    assert front_port in {p["port"] for p in front["spec"]["ports"]}


def test_web_calls_the_front_with_mutual_tls_and_a_token_from_secrets(rendered: Rendered) -> None:
    settings, spec, main = web_settings(rendered)
    for path in (settings.connection.tls_ca, settings.connection.tls_cert,
                 settings.connection.tls_key):
        assert path is not None
        assert_secret_file(rendered, spec, main, str(path))
    token = {e["name"]: e for e in main["env"]}["DERMSERVE_TOKEN"]["valueFrom"]["secretKeyRef"]
    if rendered.overlay == "dev":  # prod expects the Secrets to be created out of band
        assert token["key"] in rendered.get("Secret", token["name"])["data"]
    assert set(config.env_names(WebSettings)) >= {e["name"] for e in main["env"]}


def probe_status(path: str, front_port: int) -> int:
    """The status the real web server answers on `path`, before a front with nothing behind
    `front_port` (free)."""
    settings = WebSettings(listen_address="127.0.0.1:0",
                           connection=ConnectionSettings(target=f"127.0.0.1:{front_port}"),
                           timeout_s=2.0)
    client = FrontClient(settings)
    server, port = create_web_server(settings, client)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code
    finally:
        server.shutdown()
        server.server_close()
        client.close()


def test_web_probes_reach_routes_the_server_serves(rendered: Rendered, free_port: int) -> None:
    """Liveness answers whatever the front does; readiness follows the front (down here)."""
    _, _, main = web_settings(rendered)
    liveness = main["livenessProbe"]["httpGet"]["path"]
    readiness = main["readinessProbe"]["httpGet"]["path"]
    assert probe_status(liveness, free_port) == 200
    assert probe_status(readiness, free_port) == 503


def test_web_may_reach_only_the_front_and_dns(rendered: Rendered) -> None:
    policies = [p for p in rendered.of_kind("NetworkPolicy")
                if "Egress" in p["spec"]["policyTypes"] and selects_web(p)]
    allowed = [(peer, {port["port"] for port in rule.get("ports", [])})
               for policy in policies for rule in policy["spec"].get("egress", [])
               for peer in rule["to"]]
    assert allowed, "no egress policy selects the web page"
    for peer, ports in allowed:
        if "namespaceSelector" in peer:
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
            assert ports == {53}
        else:
            assert peer["podSelector"]["matchLabels"] == SERVER and ports == {50051}


def test_only_the_ingress_controller_reaches_the_page_and_the_page_the_front(
        rendered: Rendered) -> None:
    ingress = [p for p in rendered.of_kind("NetworkPolicy")
               if "Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")]
    to_web = [peer for p in ingress if selects_web(p)
              for rule in p["spec"]["ingress"] for peer in rule["from"]]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in to_web] == [
        {"kubernetes.io/metadata.name": "ingress-nginx"}]
    from_web = [rule for p in ingress if selects_server(p) for rule in p["spec"]["ingress"]
                if {"podSelector": {"matchLabels": WEB}} in rule["from"]]
    assert [{port["port"] for port in rule["ports"]} for rule in from_web] == [{50051}]


def test_the_example_ingress_routes_to_the_web_service(rendered: Rendered) -> None:
    (ingress,) = rendered.of_kind("Ingress")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]]
    assert backends == [{"name": "dermserve-web", "port": {"name": "http"}}]
    service = rendered.get("Service", "dermserve-web")
    assert "http" in {p["name"] for p in service["spec"]["ports"]}
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.rstrip("m")) * 1024 * 1024 > WebSettings().max_image_bytes


def secret_text(rendered: Rendered, name: str, key: str) -> str:
    return base64.b64decode(rendered.get("Secret", name)["data"][key]).decode()


def test_users_sign_in_at_the_ingress_and_the_page_believes_only_the_controller(
        rendered: Rendered) -> None:
    """The Ingress authenticates every request (auth-url) and passes the user in the headers the
    page reads; the page trusts proxies (so /api/* needs a user), answers the Ingress host, and
    its token may delegate (dev overlay's tokens file)."""
    settings, _, _ = web_settings(rendered)
    (ingress,) = rendered.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"]
    passed = {name.strip().lower() for name in
              annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")}
    assert {settings.user_header, settings.groups_header} <= passed
    assert settings.trusted_proxies and settings.operator_group
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts <= set(settings.allowed_hosts)
    if rendered.overlay == "dev":
        token = secret_text(rendered, "dermserve-web-client", "token").strip()
        grant = TokenTable.parse(secret_text(rendered, "dermserve-auth", "tokens")).grant_for(
            token)
        assert grant is not None and grant.delegate
