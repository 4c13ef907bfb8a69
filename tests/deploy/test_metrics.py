"""Every metric that the alert rules and the Grafana dashboard query is one that the front service
or the worker really exports. The exported names come from their own Prometheus registries, built
the way the processes build them, so a renamed metric fails here instead of silencing an alert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from dermserve.service.metrics import Metrics
from dermserve.worker.metrics import BatchStateCollector, WorkerMetrics
from tests.deploy.conftest import DEPLOY

RULES = DEPLOY / "prometheus" / "dermserve-rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "dermserve.json"

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
"""The series names Prometheus sees for each family type (prometheus_client's exposition)."""

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric (or recorded series) names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = GROUPING.sub(" ", expr)  # grouping label lists
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    names = set()
    for match in IDENTIFIER.finditer(expr):
        before = expr[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # a number's exponent or a duration's unit
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function call
        if match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


class EmptyStore:
    """Stands in for batch.store.JobStore: no jobs (collect() only needs the names)."""

    def active_jobs(self) -> list[str]:
        return []

    def state(self, job_id: str) -> None:
        return None

    def finished_counts(self) -> dict[str, int]:
        return {}


class EmptyQueues:
    """Stands in for batch.queues.ChunkQueues: empty queues."""

    def depth(self) -> dict[Any, int]:
        return {}


def exported(registry: CollectorRegistry) -> set[str]:
    return {family.name + suffix for family in registry.collect()
            for suffix in SUFFIXES[family.type]}


def service_series() -> set[str]:
    return exported(Metrics().registry)


def worker_series() -> set[str]:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    registry.register(BatchStateCollector(EmptyStore(), EmptyQueues()))  # type: ignore[arg-type]
    return exported(registry)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> Iterator[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert match, f"unsupported template query {query['query']!r}"
            yield match.group(1)


def test_extractor_finds_metrics_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{method="x:y"}[5m])))'
            ' > 2 * b:c:d offset 1h unless on (ns) vector(1e3) and '
            'rate(c_total{ns="$ns"}[$__rate_interval])')
    assert metric_names(expr) == {"a_bucket", "b:c:d", "c_total"}


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_queried_metric_is_exported(source: str) -> None:
    exprs = [r["expr"] for r in rules()] if source == "rules" else list(dashboard_exprs())
    assert exprs
    recorded = {r["record"] for r in rules() if "record" in r}
    available = service_series() | worker_series() | recorded
    queried = set().union(*(metric_names(e) for e in exprs))
    missing = queried - available
    assert not missing, f"{source} query series nobody exports: {sorted(missing)}"


def test_status_codes_in_rules_are_grpc_codes() -> None:
    codes = {code.name for code in grpc.StatusCode}
    for rule in rules():
        for alternatives in re.findall(r'code=~?"([^"]+)"', rule["expr"]):
            assert set(alternatives.split("|")) <= codes, rule


def test_every_dashboard_panel_queries_something() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(metric_names(t["expr"]) for t in panel["targets"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
