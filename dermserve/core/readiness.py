"""A ready file: how a process tells the launcher that started it (devtools/stack/launcher.py) that
it, and not some other process on the same port, is up. It holds {"pid": ..., "port": ...}; the
launcher compares the pid with the child it started and the port with the one it asked for, so a
stranger answering that port is never announced as dermserve."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ready_file(path: Path | None, port: int) -> None:
    """Write this process's pid and `port` to `path` atomically (nothing when `path` is None)."""
    if path is None:
        return
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "port": port}), encoding="utf-8")
    temporary.replace(path)


def read_ready_file(path: Path) -> dict[str, int]:
    """{"pid": ..., "port": ...}, or {} when the file is missing or half-written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"pid": int(data["pid"]), "port": int(data["port"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
