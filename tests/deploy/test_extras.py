"""Each component's extra pulls in what it runs and no more, read from the lock: the page and the
CLI carry no TensorFlow, Redis or rq, and the stubs' generator ships in no image."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"tensorflow", "keras", "redis", "rq", "matplotlib"}
BUILD_ONLY = {"grpcio-tools", "mypy-protobuf"}


def lock() -> dict[str, Any]:
    packages = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    return {package["name"]: package for package in packages}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(start: list[Any], locked: dict[str, Any]) -> set[str]:
    """Every locked package reachable from `start`, markers ignored (an over-estimate: a check
    that something is absent can only be stricter for it)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        dependency = todo.pop()
        name = normal(str(dependency["name"]))
        extras = dependency.get("extra", [])
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        package = locked[name]
        todo.extend(package.get("dependencies", []))
        for extra in extras:
            todo.extend(package.get("optional-dependencies", {}).get(extra, []))
    return {key.split("[")[0] for key in seen}


def extra_closure(extra: str) -> set[str]:
    locked = lock()
    project = locked["dermserve"]
    base = list(project.get("dependencies", []))
    extras = project["optional-dependencies"][extra]
    return closure([*base, *extras], locked)


@pytest.mark.parametrize("extra", ["web", "client"])
def test_the_clients_carry_no_server_side_library(extra: str) -> None:
    assert "grpcio" in extra_closure(extra)
    assert extra_closure(extra) & HEAVY == set()


@pytest.mark.parametrize("extra, needs", [
    ("server", {"tensorflow", "tensorflow-serving-api", "redis", "rq", "pydicom"}),
    ("worker", {"tensorflow", "redis", "rq", "prometheus-client"}),
    ("trainer", {"tensorflow", "matplotlib", "pillow"}),
    ("web", {"starlette", "uvicorn"}),
    ("client", {"numpy", "fhir-resources"}),
])
def test_each_extra_has_what_its_component_runs(extra: str, needs: set[str]) -> None:
    assert needs <= extra_closure(extra)


@pytest.mark.parametrize("extra", ["server", "worker", "trainer", "web", "client"])
def test_no_extra_ships_a_build_tool(extra: str) -> None:
    assert extra_closure(extra) & BUILD_ONLY == set()
