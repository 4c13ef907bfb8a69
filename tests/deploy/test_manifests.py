"""The rendered overlays are valid Kubernetes objects and hold the properties the design promises:
hardened pods, probes, selectors that select something, and network isolation."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.conftest import Rendered

KUBERNETES_VERSION = "1.31.0"
"""The oldest Kubernetes dermserve supports: native gRPC probes (GA 1.27) and the preStop sleep
action (beta, on by default, since 1.30) are both in it. kubernetes-validate bundles its schema."""
NEWEST_BUNDLED_VERSION = "1.37.0"
"""The newest schema the locked kubernetes-validate bundles: nothing we use was removed since."""

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
"""Kinds with no bundled schema (Prometheus Operator CRDs): test_crd_structure checks them."""

WORKLOAD_COMPONENTS = {"server", "worker", "tfserving", "redis", "trainer", "web"}


def is_crd(doc: dict[str, Any]) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_KINDS


def test_overlay_renders_every_component(rendered: Rendered) -> None:
    components = {spec_labels(workload).get("app.kubernetes.io/component")
                  for workload, _ in rendered.pod_specs()}
    assert components == WORKLOAD_COMPONENTS


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, NEWEST_BUNDLED_VERSION])
def test_strict_schema_validation(rendered: Rendered, version: str) -> None:
    failures = []
    for doc in rendered.docs:
        if is_crd(doc):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validator is really strict for the version we name (guards test_strict_schema_...)."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 1}], "notAField": True}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_crd_structure(rendered: Rendered) -> None:
    crds = [doc for doc in rendered.docs if doc["apiVersion"].startswith("monitoring.coreos.com")]
    assert {(d["apiVersion"], d["kind"]) for d in crds} == CRD_KINDS
    for monitor in rendered.of_kind("PodMonitor"):
        assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
        pods = pods_matching(rendered, monitor["spec"]["selector"]["matchLabels"])
        assert pods, f"PodMonitor {monitor['metadata']['name']} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert set(endpoint) <= {"port", "path", "interval"}
            assert endpoint["path"].startswith("/")
            for _, spec in pods:
                assert endpoint["port"] in port_names(spec), endpoint
    (rule,) = rendered.of_kind("PrometheusRule")
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item) and "expr" in item, item
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}


def test_pods_are_hardened(rendered: Rendered) -> None:
    for workload, spec in rendered.pod_specs():
        name = workload["metadata"]["name"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "memory" in container["resources"]["limits"], name
            assert "cpu" in container["resources"]["requests"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]} | claim_templates(workload)
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp is not an emptyDir"


def test_long_running_containers_have_probes(rendered: Rendered) -> None:
    for workload, spec in rendered.pod_specs():
        if workload["kind"] == "CronJob":
            continue
        for container in spec["containers"]:
            assert "livenessProbe" in container, workload["metadata"]["name"]
            for probe in probes(container):
                port = probe_port(probe)
                if isinstance(port, str):
                    assert port in port_names(spec), (workload["metadata"]["name"], port)


def test_server_uses_native_grpc_probes(rendered: Rendered) -> None:
    server = rendered.get("Deployment", "dermserve-server")
    (container,) = server["spec"]["template"]["spec"]["containers"]
    for key in ("startupProbe", "readinessProbe"):
        assert set(container[key]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}
    # Liveness must not follow the model's health: a dead TF Serving is no reason to restart.
    assert "tcpSocket" in container["livenessProbe"]


def test_every_service_selects_pods_with_its_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        matched = pods_matching(rendered, service["spec"]["selector"])
        assert matched, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for _, spec in matched:
                assert port["targetPort"] in port_names(spec), (service["metadata"]["name"], port)


def test_every_disruption_budget_and_autoscaler_has_a_target(rendered: Rendered) -> None:
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert pods_matching(rendered, pdb["spec"]["selector"]["matchLabels"]), pdb
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = rendered.get(ref["kind"], ref["name"])
        assert "resources" in target["spec"]["template"]["spec"]["containers"][0]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_namespace_is_set_and_restricted(rendered: Rendered) -> None:
    (namespace,) = rendered.of_kind("Namespace")
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in rendered.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == name, doc["metadata"]["name"]


def test_only_the_front_and_the_page_are_reachable_from_outside(rendered: Rendered) -> None:
    """Every pod is denied by default; TF Serving and Redis admit only dermserve's own pods; only
    the front's gRPC port and the web page's HTTP port admit peers selected by namespace or
    CIDR."""
    policies = rendered.of_kind("NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert deny and "ingress" not in deny[0]["spec"], "no default-deny policy"
    assert "Ingress" in deny[0]["spec"]["policyTypes"]
    outside_ports: dict[str, set[int]] = {}
    for policy in policies:
        selected = policy["spec"]["podSelector"].get("matchLabels", {})
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    continue  # same-namespace pods
                component = selected.get("app.kubernetes.io/component", "*")
                ports = {p["port"] for p in rule["ports"]}
                if peer.get("namespaceSelector", {}).get("matchLabels") == MONITORING:
                    assert ports <= metrics_ports(rendered), policy["metadata"]["name"]
                    continue
                outside_ports.setdefault(component, set()).update(ports)
    assert outside_ports == {"server": {50051}, "web": {8080}}


MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


# --- helpers -------------------------------------------------------------------------------------
def spec_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "CronJob":
        template = workload["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = workload["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def pods_matching(rendered: Rendered, selector: dict[str, str]
                  ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, s) for w, s in rendered.pod_specs()
            if selector.items() <= spec_labels(w).items()]


def port_names(spec: dict[str, Any]) -> set[str]:
    return {p["name"] for c in spec["containers"] for p in c.get("ports", [])}


def metrics_ports(rendered: Rendered) -> set[int]:
    """Container ports that the PodMonitors scrape."""
    found = set()
    for monitor in rendered.of_kind("PodMonitor"):
        names = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        for _, spec in pods_matching(rendered, monitor["spec"]["selector"]["matchLabels"]):
            found |= {p["containerPort"] for c in spec["containers"] for p in c["ports"]
                      if p["name"] in names}
    return found


def probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")
            if k in container]


def probe_port(probe: dict[str, Any]) -> int | str | None:
    for kind in ("grpc", "httpGet", "tcpSocket"):
        if kind in probe:
            port: int | str = probe[kind]["port"]
            return port
    return None


def claim_templates(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    templates = workload["spec"].get("volumeClaimTemplates", [])
    return {t["metadata"]["name"]: {"persistentVolumeClaim": {}} for t in templates}


def test_every_image_is_pinned(rendered: Rendered) -> None:
    for workload, spec in rendered.pod_specs():
        for container in spec["containers"]:
            name, _, tag = container["image"].rpartition(":")
            digest = "@sha256:" in container["image"]
            assert digest or (name and tag and tag != "latest"), (workload["metadata"]["name"],
                                                                   container["image"])
