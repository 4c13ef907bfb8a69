"""Small helpers shared by the backend tests (and usable by other test areas)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from dermserve.core.backends.base import Backend, ModelRef

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


class Traffic:
    """One thread per batch calling `backend.predict(ref, batch)` back to back while the block
    runs; records the version behind every answer and every exception, so that a hot-reload test
    can show that no call failed."""

    def __init__(self, backend: Backend, ref: ModelRef, batches: Sequence[np.ndarray]) -> None:
        self.backend, self.ref = backend, ref
        self.answered: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(batch,)) for batch in batches]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for_more(self, calls: int, what: str) -> None:
        """Wait until `calls` more calls have been answered than now."""
        count = len(self.answered)
        wait_until(lambda: len(self.answered) > count + calls, what=what)

    def _call(self, batch: np.ndarray) -> None:
        while not self._stop.is_set():
            try:
                self.answered.append(self.backend.predict(self.ref, batch).version.version)
            except BaseException as exc:  # record, so that the test reports it
                self.errors.append(exc)
