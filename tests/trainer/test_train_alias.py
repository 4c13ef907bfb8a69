"""`python -m trainer.train` is a thin alias of `dermserve-train --train-only`: its old flag
names still parse, with a warning, into the same TrainSettings as the new ones."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trainer.cli import build_parser, settings_from
from trainer.train import renamed_flags


def test_old_flags_become_the_new_ones_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    old = ["--data-dir", "data", "--weights", "w.h5", "--views=4", "--frozen-batchnorm",
           "--seed", "3"]
    with caplog.at_level(logging.WARNING):
        new = renamed_flags(old)
    assert new == ["--data-dir", "data", "--weights-path", "w.h5", "--views-per-image=4",
                   "--fine-tune-batchnorm=false", "--seed", "3"]
    assert "--weights is deprecated" in caplog.text
    settings = settings_from(build_parser({}).parse_args(["--train-only", *new]))
    assert settings.train_only
    assert settings.weights_path == Path("w.h5")
    assert settings.views_per_image == 4
    assert settings.fine_tune_batchnorm is False
    assert settings.seed == 3
