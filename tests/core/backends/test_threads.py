"""The embedded backend sizes TensorFlow's thread pools from the settings
(dermserve/core/defaults.py says why one thread per op): in a fresh process the sizes take; once
TensorFlow has run an op they are fixed, and a backend opened later logs that instead of failing."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from dermserve.core.backends.savedmodel import configure_threads

OPEN_A_FRONT_BACKEND = """
import sys
import tensorflow as tf
from dermserve.core.backends.factory import open_backend
from dermserve.service.settings import Settings

settings = Settings.from_sources(sys.argv[1:], {})
backend = open_backend(settings)
tf.constant(1) + 1  # TensorFlow has started: the sizes are fixed now
backend.close()
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def test_the_front_backend_starts_tensorflow_with_the_thread_flags(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", OPEN_A_FRONT_BACKEND, "--model-base", str(tmp_path),
         "--intra-op-threads", "1", "--inter-op-threads", "3"],
        cwd=root, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split()[-2:] == ["1", "3"]


def test_sizes_asked_once_tensorflow_has_started_are_logged_and_change_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    import tensorflow as tf

    tf.constant(1) + 1
    running = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    with caplog.at_level(logging.WARNING, logger="dermserve.core.backends.savedmodel"):
        configure_threads(*running)  # the same sizes again: nothing to say
        assert not caplog.records
        configure_threads(running[0] + 1, running[1] + 1)
    assert "keeping them" in caplog.text
    assert (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads()) == running
