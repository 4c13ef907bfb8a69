"""The README's quick start works as printed (issue 30): its first screen shows the CLI, grpcurl,
Python and batch commands and how to stop, and its Python snippet, CLI line and grpcurl line run
unchanged against a real front (on port 0, over the FakeBackend; only the address is swapped).
The batch lines need the whole stack: devtools/first_hour_check.sh runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import FakeBackend, running_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST_SCREEN_LINES = 60
DEFAULT_TARGET = "127.0.0.1:50051"
IMAGE = ROOT.parent / "shared/data/ham10000/images/ISIC_0024306.jpg"


def first_screen() -> str:
    return "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN_LINES])


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", first_screen(), re.DOTALL)


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    if not IMAGE.exists():
        pytest.skip("the README's HAM10000 image is not here")
    with running_server(FakeBackend()) as running:
        yield f"127.0.0.1:{running.port}"


def shell_commands() -> str:
    return "\n".join(blocks("sh"))


def test_the_first_screen_shows_the_four_ways_and_how_to_stop() -> None:
    screen = first_screen()
    commands = shell_commands()
    assert "dermserve classify" in commands and "grpcurl" in commands
    assert "dermserve batch submit var/batch-input/" in commands
    assert "LesionClassifierStub" in blocks("python")[0]
    assert "Ctrl-C" in screen and "make stop" in screen


def test_the_python_snippet_runs_as_printed(target: str) -> None:
    (snippet,) = blocks("python")
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 7
    ran = subprocess.run([sys.executable, "-c", snippet.replace(DEFAULT_TARGET, target)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    label, probability, abstained = ran.stdout.split()
    assert label == "bcc" and 0 < float(probability) <= 1 and abstained in ("True", "False")


def test_the_cli_line_runs_as_printed(target: str) -> None:
    line = next(line for line in shell_commands().splitlines()
                if line.startswith(".venv/bin/dermserve classify"))
    ran = subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DERMSERVE_TARGET": target})
    assert ran.returncode == 0, ran.stderr
    assert "Result: Basal cell carcinoma (bcc)" in ran.stdout


def test_the_grpcurl_line_runs_as_printed(target: str) -> None:
    if not (ROOT / ".tools/bin/grpcurl").exists():
        pytest.skip("grpcurl is not installed (make grpcurl)")
    lines = shell_commands().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("{ printf"))
    command = "\n".join(lines[start:start + 2]).replace(DEFAULT_TARGET, target)
    ran = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer.get("topLabel", answer.get("top_label")) == "bcc", answer
