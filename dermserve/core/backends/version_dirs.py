"""What a model directory holds, as TF Serving reads it: `<model_dir>/<version>/saved_model.pb`.

Only directories named by a positive integer that contain `saved_model.pb` are versions; anything
else (the trainer's temporary directories, stray files) is ignored. Each version comes with a
fingerprint of its files (path, size, modification time), so that a caller can tell a directory
that is still being written from one that has settled.

`<model_dir>/version_labels.json` (optional) maps version labels to versions, e.g.
`{"stable": 3, "canary": 4}`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dermserve.core.errors import InternalError

SAVED_MODEL_FILE = "saved_model.pb"
VERSION_LABELS_FILE = "version_labels.json"
UNKNOWN_LABEL_REASON = "UNKNOWN_VERSION_LABEL"
"""ModelNotFound's reason when a version label names no version (both backends use it)."""
_VERSION_NAME = re.compile(r"[0-9]+")

Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size in bytes, mtime in ns) of every file, sorted."""


@dataclass(frozen=True)
class VersionDir:
    number: int
    path: Path
    fingerprint: Fingerprint | None  # None: the directory changed while we read it


def parse_version(name: str) -> int | None:
    """The version number a directory name stands for, or None if it is not a version."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    number = int(name)
    return number if number > 0 else None


def scan_versions(model_dir: Path) -> dict[int, VersionDir] | None:
    """The versions under `model_dir` by number; None when `model_dir` is not a directory."""
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return None
    versions: dict[int, VersionDir] = {}
    for entry in entries:
        number = parse_version(entry.name)
        path = Path(entry.path)
        if number is None or not entry.is_dir() or not (path / SAVED_MODEL_FILE).is_file():
            continue
        versions[number] = VersionDir(number, path, fingerprint(path))
    return versions


def fingerprint(version_dir: Path) -> Fingerprint | None:
    """Every file's (relative path, size, mtime); None if a file vanished while we looked."""
    files: list[tuple[str, int, int]] = []
    try:
        for root, _dirs, names in os.walk(version_dir):
            for name in names:
                path = os.path.join(root, name)
                stat = os.stat(path)
                files.append((os.path.relpath(path, version_dir), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(files))


def read_version_labels(model_dir: Path) -> dict[str, int] | None:
    """The labels in `version_labels.json`; None when there is no such file."""
    path = model_dir / VERSION_LABELS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InternalError(f"cannot read {path}: {exc}", "BAD_VERSION_LABELS") from exc
    if not isinstance(raw, dict) or not all(
            isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool)
            and value > 0 for key, value in raw.items()):
        raise InternalError(f"{path} must map label names to positive version numbers",
                            "BAD_VERSION_LABELS")
    return dict(raw)
