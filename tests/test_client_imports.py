"""The clients stay light: importing the `dermserve` CLI (batch commands included) or the web
page loads neither the front, the worker, Redis, rq nor TensorFlow. Each is imported in a fresh
interpreter, so that what another test imported cannot hide what these pull in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_SIDE = ("dermserve.service", "dermserve.worker", "dermserve.batch.jobs",
               "dermserve.batch.store", "dermserve.batch.queues", "redis", "rq", "tensorflow",
               "keras")


def loaded_by(module: str) -> set[str]:
    code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
            "print(json.dumps(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return set(json.loads(run.stdout.splitlines()[-1]))


def server_side(modules: set[str]) -> list[str]:
    return sorted(name for name in modules
                  if any(name == part or name.startswith(part + ".") for part in SERVER_SIDE))


@pytest.mark.parametrize("entry", ["dermserve.cli.main", "dermserve.cli.batch",
                                   "dermserve.web.__main__"])
def test_a_client_loads_nothing_of_the_server_side(entry: str) -> None:
    modules = loaded_by(entry)
    assert entry in modules
    assert server_side(modules) == []


def test_the_check_sees_the_server_side() -> None:
    """It can fail: the front's batch servicer pulls in Redis and the batch queue."""
    assert {"redis", "dermserve.batch.store"} <= set(
        server_side(loaded_by("dermserve.service.batch_jobs")))
