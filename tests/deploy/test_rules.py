"""The alert rules: promtool accepts them, their unit tests pass, and the PrometheusRule that the
Operator loads is exactly the plain rules file."""

from __future__ import annotations

import importlib.util
import subprocess
from types import ModuleType

import yaml

from tests.deploy.conftest import DEPLOY, require_promtool

RULES = DEPLOY / "prometheus" / "dermserve-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "dermserve-rules.test.yaml"
RENDERER = DEPLOY / "prometheus" / "render_prometheusrule.py"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_promtool(), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=RULES.parent)


def load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_prometheusrule", RENDERER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert alerts == tested
    operations = (DEPLOY.parent / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"\n### {alert}\n" in operations, f"docs/operations.md has no section for {alert}"
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:  # the heading's anchor, as GitHub renders it
                assert rule["annotations"]["runbook"] == \
                    f"docs/operations.md#{rule['alert'].lower()}"


def test_prometheusrule_is_rendered_from_the_rules_file() -> None:
    renderer = load_renderer()
    expected = renderer.render(RULES.read_text(encoding="utf-8"))
    committed = renderer.OUTPUT_FILE.read_text(encoding="utf-8")
    assert committed == expected, (
        "deploy/base/monitoring/prometheusrule.yaml is stale: run "
        "`.venv/bin/python deploy/prometheus/render_prometheusrule.py`")
    rule = yaml.safe_load(committed)
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
