"""Fixtures for the offline checks of deploy/: the overlays rendered once per session by the real
kubectl (kustomize), and the tools the Makefile installs.

The tools are not optional: `make test` runs `make tools` first, so a missing one is a failure
with the command that installs it, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")

# The paths the Makefile's `tools` target installs to (KUBECTL, PROMTOOL).
KUBECTL = ROOT / ".tools" / "kubectl" / "bin" / "kubectl"
PROMTOOL_NAME = "promtool"


def require_kubectl() -> Path:
    if not KUBECTL.is_file():
        pytest.fail(f"{KUBECTL.relative_to(ROOT)} is missing: run `make tools`")
    return KUBECTL


def require_promtool() -> str:
    found = shutil.which(PROMTOOL_NAME)
    if found is None:
        pytest.fail("promtool is missing: run `make tools` (Debian package prometheus)")
    return found


@dataclass(frozen=True)
class Rendered:
    """One overlay's `kubectl kustomize` output, as parsed documents."""

    overlay: str
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The one `kind` whose name is `name`, or its name with a kustomize hash suffix."""
        found = [d for d in self.of_kind(kind)
                 if d["metadata"]["name"] == name or d["metadata"]["name"].startswith(name + "-")]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, pod spec) for every Deployment, StatefulSet and CronJob."""
        for doc in self.docs:
            if doc["kind"] in ("Deployment", "StatefulSet"):
                yield doc, doc["spec"]["template"]["spec"]
            elif doc["kind"] == "CronJob":
                yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def render(overlay: str) -> Rendered:
    kubectl = require_kubectl()
    result = subprocess.run([str(kubectl), "kustomize", str(DEPLOY / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return Rendered(overlay, docs)


@pytest.fixture(scope="session")
def rendered_overlays() -> dict[str, Rendered]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, rendered_overlays: dict[str, Rendered]) -> Rendered:
    return rendered_overlays[request.param]
