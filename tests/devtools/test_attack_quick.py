"""The attack suite's quick mode (devtools/attack/) against a real TLS + token stack: a front
process, a worker process and a redis-server on loopback. `make attack` runs the full corpus.

Every family must end without an INTERNAL and without a failed promise; crashes, memory growth,
forged or oversized log lines and ERROR entries fail the run. The timing promises (unary p99,
CPU bombs refused fast) are reported here, not asserted: on a shared machine they measure the
machine too, and `make attack` judges them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.attack.families import FAMILIES
from devtools.attack.runner import RSS_GROWTH_LIMIT_MB, run_suite


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir: Path = tmp_path_factory.mktemp("attack")
    result = run_suite(workdir / "stack", quick=True)
    print("timing:", result["classify_probe"], result["timing_failures"])
    return result


def outcomes(summary: dict[str, Any], family: str) -> dict[str, int]:
    found: dict[str, int] = summary["families"][family]["outcomes"]
    return found


def reasons(summary: dict[str, Any], family: str) -> dict[str, int]:
    found: dict[str, int] = summary["families"][family]["reasons"]
    return found


def test_no_process_crashed(summary: dict[str, Any]) -> None:
    assert summary["crashes"] == []


def test_memory_growth_stays_under_the_limit(summary: dict[str, Any]) -> None:
    for name, rss in summary["rss_mb"].items():
        assert rss["after"] - rss["before"] < RSS_GROWTH_LIMIT_MB, (name, rss)


def test_every_family_ran(summary: dict[str, Any]) -> None:
    assert set(summary["families"]) == set(FAMILIES)
    assert all(f["attempts"] > 0 for f in summary["families"].values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_internal_errors(summary: dict[str, Any], family: str) -> None:
    assert summary["families"][family]["internal"] == []


def test_the_server_counted_no_internal_error(summary: dict[str, Any]) -> None:
    assert summary["server_outcomes"].get("INTERNAL", 0) == 0
    assert summary["server_outcomes"].get("UNKNOWN", 0) == 0


def test_every_promise_held(summary: dict[str, Any]) -> None:
    # Everything but timing: refusals past each cap, nothing read outside the roots, no other
    # client's job found, hostile ids refused inside the stream, bombs refused TOO_MANY_SCANS.
    assert summary["failures"] == []


def test_every_auth_bypass_is_refused(summary: dict[str, Any]) -> None:
    found = outcomes(summary, "auth")
    assert "OK" not in found
    assert found.get("PERMISSION_DENIED") == 1  # the token granted BatchJobs only


def test_the_health_flood_is_refused_past_the_caps(summary: dict[str, Any]) -> None:
    found = reasons(summary, "health_flood")
    assert found.get("RESOURCE_EXHAUSTED/TOO_MANY_STREAMS", 0) > 0
    assert found.get("RESOURCE_EXHAUSTED/TOO_MANY_CLIENT_STREAMS", 0) > 0
    held = summary["families"]["health_flood"]["measures"]["watches_held_per_client"]
    assert sum(held.values()) == 32 and max(held.values()) == 8


def test_idle_streams_are_refused_past_the_caps(summary: dict[str, Any]) -> None:
    found = reasons(summary, "idle_streams")
    assert found.get("RESOURCE_EXHAUSTED/TOO_MANY_STREAMS", 0) > 0
    assert found.get("RESOURCE_EXHAUSTED/TOO_MANY_CLIENT_STREAMS", 0) > 0


def test_cpu_bombs_are_refused_before_decoding(summary: dict[str, Any]) -> None:
    assert reasons(summary, "scan_bomb") == {"INVALID_ARGUMENT/TOO_MANY_SCANS": 4}


def test_nothing_outside_the_roots_is_read_after_a_symlink_swap(summary: dict[str, Any]) -> None:
    found = reasons(summary, "symlink_race")
    assert found == {"IMAGE:INVALID_ARGUMENT/SYMLINK_REFUSED": 5}
    assert "IMAGE:OK" not in outcomes(summary, "symlink_race")


def test_another_clients_job_is_not_found(summary: dict[str, Any]) -> None:
    found = outcomes(summary, "cross_client")
    assert found.get("NOT_FOUND") == 5  # get, results, watch, cancel, a guessed id


def test_authorised_calls_succeed_during_the_abuse(summary: dict[str, Any]) -> None:
    probe = summary["classify_probe"]
    assert probe["calls"] > 0 and probe["failures"] == {}
    assert outcomes(summary, "health_flood").get("OK", 0) >= 32 + 8 + 2  # watches, Classify, Check


def test_dicom_bombs_and_polyglots_are_refused_by_front_and_worker(
        summary: dict[str, Any]) -> None:
    found = reasons(summary, "dicom_bombs")
    assert found.get("INVALID_ARGUMENT/DICOM_TOO_COMPLEX") == 3
    assert found.get("INVALID_ARGUMENT/AMBIGUOUS_FORMAT") == 2
    assert found.get("IMAGE:INVALID_ARGUMENT/DICOM_TOO_COMPLEX") == 3
    assert outcomes(summary, "dicom_bombs").get("OK") == 1  # the job's submission, no image


def test_hostile_listing_tokens_and_long_ids_are_invalid_argument(
        summary: dict[str, Any]) -> None:
    found = outcomes(summary, "listing_tokens")
    assert set(found) == {"OK", "INVALID_ARGUMENT"} and found["OK"] == 1  # the submission
