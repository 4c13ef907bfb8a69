"""Throwaway certificates for tests (devtools/attack/pki.py makes them with openssl)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devtools.attack import pki
from devtools.attack.pki import Pki

__all__ = ["Pki", "make_pki"]


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    return pki.make_pki(directory)
