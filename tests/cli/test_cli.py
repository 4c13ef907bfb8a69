"""`dermserve classify` and `dermserve models` against the real server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dermserve.cli.main import main
from tests.service.conftest import Running, good_jpeg


def test_classify_prints_json_for_each_image(fake_server: Running, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "lesion.jpg", tmp_path / "notes.txt"
    good.write_bytes(good_jpeg())
    bad.write_text("not an image")
    status = main(["classify", str(good), str(bad), "--json", "--version", "1",
                   "--target", f"127.0.0.1:{fake_server.port}"])
    entries = json.loads(capsys.readouterr().out)
    assert status == 1  # one image failed
    assert entries[0]["image"] == str(good)
    result = entries[0]["result"]
    assert len(result["probabilities"]) == 7 and result["model"]["version"] == "1"
    assert entries[1]["error"]["reason"] == "UNSUPPORTED_FORMAT"


def test_classify_prints_a_table(fake_server: Running, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(good_jpeg())
    assert main(["classify", str(image), "--target", f"127.0.0.1:{fake_server.port}"]) == 0
    out = capsys.readouterr().out
    assert "Result: Basal cell carcinoma (bcc)" in out and "Melanoma" in out and "v2" in out
    assert len([line for line in out.splitlines() if re.match(r"    \w+ .* \d\.\d{3}$", line)]) == 7


def test_models_lists_versions(fake_server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--target", f"127.0.0.1:{fake_server.port}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["v2", "v1"]


def test_unreachable_service_is_reported(tmp_path: Path, free_port: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "lesion.jpg"
    image.write_bytes(good_jpeg())
    status = main(["classify", str(image), "--json", "--timeout", "1",
                   "--target", f"127.0.0.1:{free_port}"])
    assert status == 1
    assert json.loads(capsys.readouterr().out)[0]["error"]["code"] == "UNAVAILABLE"


@pytest.fixture
def context_call(context_server: Running, tmp_path: Path) -> tuple[str, list[str]]:
    """A JPEG, and the flags that send it to the context-echoing server's version 3."""
    image = tmp_path / "lesion.jpg"
    image.write_bytes(good_jpeg())
    return str(image), ["--target", f"127.0.0.1:{context_server.port}", "--version", "3"]


def context_received(classification: dict[str, Any]) -> tuple[float, int, int]:
    """The (age, sex, site) inputs the echoing model read, from a classification's JSON."""
    from tests.context_models import received

    return received({item["label"]: item["probability"]
                     for item in classification["probabilities"]})


def test_classify_sends_the_patient_context(context_call: tuple[str, list[str]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image, target = context_call
    assert main(["classify", image, "--json", "--age", "62", "--sex", "female",
                 "--site", "back", *target]) == 0
    result = json.loads(capsys.readouterr().out)[0]["result"]
    assert context_received(result) == (62.0, 1, 4) and result["context_used"] is True
    assert main(["classify", image, "--age", "62", *target]) == 0
    assert "patient context (age, sex, site) was used" in capsys.readouterr().out
    assert main(["classify", image, "--json", "--site", "elbow", *target]) == 1
    assert json.loads(capsys.readouterr().out)[0]["error"]["reason"] == "INVALID_CONTEXT"


def test_explain_sends_the_patient_context(context_call: tuple[str, list[str]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    image, target = context_call
    assert main(["explain", image, "--json", "--age", "71", "--sex", "male",
                 "--site", "back", *target]) == 0
    classification = json.loads(capsys.readouterr().out)["classification"]
    assert context_received(classification) == (71.0, 2, 4)
    assert classification["context_used"] is True
    assert main(["explain", image, "--json", "--site", "elbow", *target]) == 1
    assert "INVALID_CONTEXT" in capsys.readouterr().err
