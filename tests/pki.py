"""Throwaway certificates for tests (tools/attack/pki.py makes them with openssl)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.attack import pki
from tools.attack.pki import Pki

__all__ = ["Pki", "make_pki"]


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    return pki.make_pki(directory)
