"""The attack suite's quick mode (tools/attack/) against a real TLS + token stack: a front
process, a worker process and a redis-server on loopback. `make attack` runs the full corpus.

Families whose remaining INTERNALs are fixed on other branches of issue 11 are marked xfail
(not strict) with the defect that owns them: they report XPASS once those fixes are merged, and
the mark comes off then. Crashes and memory growth are asserted for every family, now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tools.attack.families import FAMILIES
from tools.attack.runner import RSS_GROWTH_LIMIT_MB, run_suite

PENDING = {
    "references": "issue 11 defect 12 (worker branch): a 5,000-character path and a symlink "
                  "loop are answered INTERNAL",
}
"""Family -> why it may still see an INTERNAL on this branch."""


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir: Path = tmp_path_factory.mktemp("attack")
    return run_suite(workdir / "stack", quick=True)


def test_no_process_crashed(summary: dict[str, Any]) -> None:
    assert summary["crashes"] == []


def test_memory_growth_stays_under_the_limit(summary: dict[str, Any]) -> None:
    for name, rss in summary["rss_mb"].items():
        assert rss["after"] - rss["before"] < RSS_GROWTH_LIMIT_MB, (name, rss)


def test_every_family_ran(summary: dict[str, Any]) -> None:
    assert set(summary["families"]) == set(FAMILIES)
    assert all(f["attempts"] > 0 for f in summary["families"].values())


@pytest.mark.parametrize("family", [
    pytest.param(name, marks=pytest.mark.xfail(reason=PENDING[name], strict=False))
    if name in PENDING else name for name in sorted(FAMILIES)])
def test_no_internal_errors(summary: dict[str, Any], family: str) -> None:
    assert summary["families"][family]["internal"] == []


def test_every_auth_bypass_is_refused(summary: dict[str, Any]) -> None:
    outcomes = summary["families"]["auth"]["outcomes"]
    assert "OK" not in outcomes
    assert set(outcomes) <= {"UNAUTHENTICATED", "UNAVAILABLE", "UNIMPLEMENTED"}


def test_authorised_calls_succeed_during_the_abuse(summary: dict[str, Any]) -> None:
    probe = summary["classify_probe"]
    assert probe["calls"] > 0 and probe["p99_s"] is not None
    assert summary["families"]["health_flood"]["outcomes"].get("OK") == 1
