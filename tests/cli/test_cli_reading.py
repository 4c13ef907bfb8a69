"""How `dermserve classify` reads for a clinician (dermserve/cli/reading.py), against the real
server over a FakeBackend whose version records thresholds: the headlines, the low-confidence and
borderline cues, the OOD score against its threshold and the melanoma operating-point line; and the
same table read in a real terminal (tmux), as a new user would see it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dermserve.cli.main import main
from dermserve.cli.reading import BORDERLINE_MARGIN, LOW_CONFIDENCE_CUE
from dermserve.core.model_config import AbstentionRule
from tests.service.conftest import (
    Running,
    ThresholdBackend,
    good_jpeg,
    probability_row,
    running_server,
)


def server_with(row: np.ndarray, rule: AbstentionRule) -> Iterator[Running]:
    with running_server(ThresholdBackend(row, rule)) as running:
        yield running


@pytest.fixture
def borderline_server() -> Iterator[Running]:
    """A proven-melanoma case the review met: 41% vasc on top, melanoma 0.161 under 0.165."""
    yield from server_with(probability_row(vasc=0.41, mel=0.161),
                           AbstentionRule(min_confidence=0.3, max_ood_score=50.0))


def classify(running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(good_jpeg())
    main(["classify", str(image), "--target", f"127.0.0.1:{running.port}"])
    return " ".join(capsys.readouterr().out.split())  # the cues wrap at READING_WIDTH


def test_a_low_confidence_borderline_result_says_so(borderline_server: Running, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = classify(borderline_server, tmp_path, capsys)
    assert "Result: Vascular lesion (vasc), probability 0.410" in out
    assert f"Low confidence: the top probability 0.41 is under {LOW_CONFIDENCE_CUE:.2f}" in out
    assert ("Melanoma operating point: probability 0.161 is below the threshold 0.165 "
            f"(borderline: within {BORDERLINE_MARGIN:.2f})") in out
    assert "sensitivity was 73.3% and the specificity 68.1%" in out
    assert "Out-of-distribution score 0.0 against the threshold 50.0: typical of the training " \
           "images." in out
    assert "Needs review" not in out


def test_a_confident_result_has_no_cue(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for running in server_with(probability_row(nv=0.9, mel=0.02), AbstentionRule(0.3, 50.0)):
        out = classify(running, tmp_path, capsys)
    assert "Result: Melanocytic nevus (nv)" in out
    assert "Low confidence" not in out and "borderline" not in out
    assert "probability 0.020 is below the threshold 0.165." in out


def test_an_abstention_is_needs_review(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for running in server_with(probability_row(nv=0.5), AbstentionRule(0.3, max_ood_score=-1.0)):
        out = classify(running, tmp_path, capsys)
    assert "Needs review: the image is unlike the training images" in out
    assert "Out-of-distribution score 0.0 against the threshold -1.0: unlike the training " \
           "images." in out
    assert "Result:" not in out and "Low confidence" not in out


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_table_reads_in_a_real_terminal(borderline_server: Running, tmp_path: Path) -> None:
    """The same command in a tmux pane 100 columns wide, captured as a user sees it."""
    image = tmp_path / "lesion.jpg"
    image.write_bytes(good_jpeg())
    done = tmp_path / "done"
    session = f"dermserve-cli-{borderline_server.port}"
    command = (f"{sys.executable} -m dermserve.cli classify "
               f"--target 127.0.0.1:{borderline_server.port} {image}; touch {done}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "40",
                    command + "; sleep 600"], check=True)
    try:
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # a poll of another process's progress: it has no other signal
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], check=True,
                                capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    (Path("var") / "artefacts").mkdir(parents=True, exist_ok=True)
    (Path("var") / "artefacts" / "cli-classify-tmux.txt").write_text(screen, encoding="utf-8")
    lines = screen.splitlines()
    assert any(line.startswith("  Result: Vascular lesion (vasc)") for line in lines)
    assert any(line.startswith("  Low confidence:") for line in lines)
    assert any(line.startswith("  Melanoma operating point:") for line in lines)
    text = " ".join(screen.split())
    assert "(borderline: within 0.02)" in text and "typical of the training images" in text
    # Wrapped by the CLI, not by the terminal (the first line is the image's long test path).
    assert all(len(line) <= 96 for line in lines[2:])
