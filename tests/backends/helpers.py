"""Small helpers shared by the backend tests (and usable by other test areas)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.02
"""How often wait_until re-checks its condition."""


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0,
               what: str = "condition") -> None:
    """Poll `condition` every POLL_S until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)


def publish_version(source_dir: Path, model_dir: Path, version: int) -> Path:
    """Publish like the trainer: copy to a non-numeric temporary name, then rename atomically."""
    temporary = model_dir / f".publishing-{version}"
    shutil.copytree(source_dir, temporary)
    target = model_dir / str(version)
    os.rename(temporary, target)
    return target
