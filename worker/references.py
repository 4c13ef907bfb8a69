"""Which files a job may read: references resolved inside the configured input roots.

Every path is resolved (symlinks followed, `..` collapsed) before it is compared with the roots,
so `../`, an absolute path elsewhere and a symlink leading out are all refused with
InvalidRequest (INVALID_ARGUMENT). The worker checks again when it opens a file, because a
symlink can change between submission and the chunk's run.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.errors import InvalidRequest, ResourceExhausted
from worker.defaults import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageRef:
    """One image of a job: what the client called it, and the file a worker reads."""

    reference: str
    path: str


class InputRoots:
    """The directories a job may read from, resolved once."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(root.resolve() for root in roots)

    def contains(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def resolve(self, text: str, relative_to: Path | None = None) -> Path:
        """The real path `text` names, or InvalidRequest when it leaves every root."""
        if not self.roots:
            raise InvalidRequest("this server has no input roots: send images inline",
                                 "NO_INPUT_ROOTS")
        if not text or "\x00" in text:
            raise InvalidRequest("an image reference is empty or malformed", "BAD_REFERENCE")
        candidate = Path(text)
        if not candidate.is_absolute():
            candidate = (relative_to or self.roots[0]) / candidate
        resolved = candidate.resolve()
        if not self.contains(resolved):
            # The message names the reference, never the resolved target or the roots.
            raise InvalidRequest(f"reference {text!r} is outside the server's input roots",
                                 "REFERENCE_OUTSIDE_INPUT_ROOTS")
        return resolved

    def expand(self, texts: Iterable[str], limit: int,
               relative_to: Path | None = None) -> list[ImageRef]:
        """Files and directories (their images, recursively, sorted) as ImageRefs."""
        refs: list[ImageRef] = []
        for text in texts:
            path = self.resolve(text, relative_to)
            found = ((ImageRef(str(p), str(p)) for p in self._images_under(path))
                     if path.is_dir() else [ImageRef(text, str(path))])
            for ref in found:
                refs.append(ref)
                check_count(len(refs), limit)  # per file: a huge folder fails early
        return refs

    def _images_under(self, directory: Path) -> Iterator[Path]:
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                resolved = path.resolve()
                if self.contains(resolved):  # a symlink inside may still lead out: skip it
                    yield resolved

    def read_manifest(self, text: str, max_bytes: int) -> tuple[str, Path]:
        """The CSV text of a manifest file inside the roots, and its directory."""
        path = self.resolve(text)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise ResourceExhausted(f"the manifest has {size} bytes; the limit is "
                                        f"{max_bytes}", "MANIFEST_TOO_LARGE")
            return path.read_text(encoding="utf-8"), path.parent
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read manifest {text!r}", "BAD_MANIFEST") from exc


def check_count(count: int, limit: int) -> None:
    if count > limit:
        raise ResourceExhausted(f"the job has more than {limit} images, the server's limit",
                                "TOO_MANY_IMAGES")


def manifest_paths(csv_text: str) -> list[str]:
    """The `path` column of a CSV with a header, or the first column of one without."""
    try:
        rows = [row for row in csv.reader(io.StringIO(csv_text)) if row and any(row)]
    except csv.Error as exc:  # a stray carriage return, a field over csv's size limit...
        raise InvalidRequest("the manifest is not valid CSV", "BAD_MANIFEST") from exc
    if not rows:
        raise InvalidRequest("the manifest lists no images", "EMPTY_MANIFEST")
    header = [cell.strip().lower() for cell in rows[0]]
    if "path" in header:
        column = header.index("path")
        rows = rows[1:]
    else:
        column = 0
    paths = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    if not paths:
        raise InvalidRequest("the manifest lists no images", "EMPTY_MANIFEST")
    return paths


def open_checked(ref: ImageRef, roots: InputRoots, max_bytes: int) -> bytes:
    """Read one image for a worker, re-checking its containment; OSError when unreadable.
    Reading max_bytes + 1 lets validation report IMAGE_TOO_LARGE without loading a huge file."""
    path = Path(ref.path).resolve()
    if not roots.contains(path):
        raise InvalidRequest(f"reference {ref.reference!r} left the input roots",
                             "REFERENCE_OUTSIDE_INPUT_ROOTS")
    with path.open("rb") as handle:
        return handle.read(max_bytes + 1)
