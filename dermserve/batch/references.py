"""Which files a job may read: references resolved inside the configured input roots.

At submission every path is resolved (symlinks followed, `..` collapsed) before it is compared
with the roots, so `../`, an absolute path elsewhere and a symlink leading out are all refused
with InvalidRequest (INVALID_ARGUMENT); a symlink inside the roots that leads inside them is
followed then, and the job stores the file it resolved to. A worker opens that stored path one
component at a time from the root's directory descriptor with O_NOFOLLOW (`open_beneath`), so a
symlink that appears later, even between a check and an open, is refused (SYMLINK_REFUSED)
instead of followed, and only a regular file is read.

References are what results show a client: the client's own text for a file it named, and for a
file found by expanding a directory its path relative to its input root (never a server path).
File names that are not UTF-8 (Latin-1 names from PACS exports) keep their bytes on disk; their
undecodable bytes are shown percent-encoded, `caf\\xe9.jpg` as `caf%E9.jpg` (`printable`).
Error messages name a reference by its position in the request, never by its text: they are
logged, and a path can be patient data. A refusal for leaving the roots names the roots (server
configuration) in the client's hint only, never in the log, so that the caller knows where to
put the file; the CLI adds the path it sent.

A file reference that is a manifest (a `.csv` or `.txt` name, or a first line with a `path`
column) contributes the images it lists, resolved against its own folder, wherever it is given:
alone, or next to folders and images. A manifest with a header may carry each row's patient
context in optional `age`, `sex` and `site` columns (core/context.py's vocabularies); a row that
names a folder gives its context to every image in it. The values are kept as written and
checked by the worker, image by image (`RowContext.parse`), so a bad value fails its row only.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dermserve.batch.defaults import (
    DEFAULT_MAX_MANIFEST_BYTES,
    IMAGE_SUFFIXES,
    MANIFEST_SUFFIXES,
    MAX_REFERENCE_BYTES,
)
from dermserve.core.context import PatientContext, patient_context
from dermserve.core.errors import DermserveError, InvalidRequest, ResourceExhausted

MANIFEST_SNIFF_BYTES = 4096  # bytes of a file read to look for a manifest's `path` header

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""O_NONBLOCK: opening a FIFO planted under a root returns at once (and fstat refuses it)
instead of blocking the worker until someone writes to it."""


CONTEXT_COLUMNS = ("age", "sex", "site")
"""A manifest's optional patient context columns, in RowContext's field order."""


@dataclass(frozen=True)
class RowContext:
    """A manifest row's patient context as written (patient data: stored with the job, never
    logged); "" is absent."""

    age: str = ""
    sex: str = ""
    site: str = ""

    def parse(self) -> PatientContext:
        """The row's context, or InvalidContext (INVALID_CONTEXT) for that image alone."""
        return patient_context(self.age, self.sex, self.site)


@dataclass(frozen=True)
class ImageRef:
    """One image of a job: what the client called it, the file a worker reads, and the patient
    context its manifest row gave (None: none)."""

    reference: str
    path: str
    context: RowContext | None = None


class InputRoots:
    """The directories a job may read from, resolved once."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(root.resolve() for root in roots)

    def contains(self, path: Path) -> bool:
        return self.root_of(path) is not None

    def root_of(self, path: Path) -> Path | None:
        """The innermost root `path` lies in, compared by name (resolve it first)."""
        inside = [root for root in self.roots if path == root or path.is_relative_to(root)]
        return max(inside, key=lambda root: len(root.parts), default=None)

    def resolve(self, text: str, relative_to: Path | None = None,
                name: str = "a reference") -> Path:
        """The real path `text` names, or InvalidRequest when it leaves every root."""
        if not self.roots:
            raise InvalidRequest("this server has no input roots: send images inline",
                                 "NO_INPUT_ROOTS")
        check_reference(text, name)
        candidate = Path(text)
        if not candidate.is_absolute():
            candidate = (relative_to or self.roots[0]) / candidate
        resolved = resolved_path(candidate, name)
        if not self.contains(resolved):
            # The message names neither the reference nor its resolved target; the client's
            # hint (never logged) names the roots, so that the caller knows where files go.
            raise InvalidRequest(f"{name} is outside the server's input roots",
                                 "REFERENCE_OUTSIDE_INPUT_ROOTS",
                                 hint=f"(the input roots: {self.describe()}); put the file "
                                      "inside one of them")
        return resolved

    def describe(self) -> str:
        return ", ".join(str(root) for root in self.roots)

    def expand(self, texts: Iterable[str], limit: int, relative_to: Path | None = None,
               source: str = "the request",
               max_manifest_bytes: int | None = DEFAULT_MAX_MANIFEST_BYTES,
               contexts: Sequence[RowContext | None] | None = None) -> list[ImageRef]:
        """Files, directories (their images, recursively, sorted) and manifests (the images
        they list; not inside a manifest: `max_manifest_bytes` None) as ImageRefs, each with
        `contexts[position]` of the text it came from."""
        refs: list[ImageRef] = []
        for position, text in enumerate(texts):
            context = contexts[position] if contexts is not None else None
            name = f"reference {position} of {source}"
            path = self.resolve(text, relative_to, name)
            if is_directory(path, name):
                found: Iterable[ImageRef] = self._images_under(path)
            elif max_manifest_bytes is not None and self.is_manifest(path):
                found = self._listed_in(path, limit, max_manifest_bytes, name)
            else:
                found = [ImageRef(text, str(path))]
            for ref in found:
                refs.append(ref if context is None else dataclasses.replace(ref, context=context))
                check_count(len(refs), limit)  # per file: a huge folder fails early
        return refs

    def _images_under(self, directory: Path) -> Iterator[ImageRef]:
        root = self.root_of(directory)
        assert root is not None  # resolve() checked it
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                resolved = path.resolve() if path.is_file() else None
            except (OSError, RuntimeError):  # a loop or an unreadable entry: not an image
                continue
            if resolved is not None and self.contains(resolved):  # a link may still lead out
                yield ImageRef(printable(path.relative_to(root).as_posix()), str(resolved))

    def is_manifest(self, path: Path) -> bool:
        """A `.csv` or `.txt` file, or one (not named as an image) whose first line has a
        `path` column."""
        suffix = path.suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            return True
        if suffix in IMAGE_SUFFIXES:
            return False
        try:
            head = self.read_file(path, MANIFEST_SNIFF_BYTES).decode("utf-8-sig")
        except (OSError, UnicodeDecodeError, DermserveError):
            return False  # not text: an image without its suffix, judged by the worker
        first = head.splitlines()[0] if head else ""
        return "path" in (cell.strip().lower() for cell in first.split(","))

    def _listed_in(self, path: Path, limit: int, max_bytes: int, name: str) -> list[ImageRef]:
        text, base = self.read_manifest(str(path), max_bytes, name)
        rows = manifest_rows(text)
        check_count(len(rows), limit)
        return self.expand([row[0] for row in rows], limit, relative_to=base,
                           source=f"the manifest ({name})", max_manifest_bytes=None,
                           contexts=[row[1] for row in rows])

    def read_manifest(self, text: str, max_bytes: int,
                      name: str = "the manifest") -> tuple[str, Path]:
        """The CSV text of a manifest file inside the roots, and its directory."""
        path = self.resolve(text, name=name)
        try:
            data = self.read_file(path, max_bytes + 1)
            if len(data) > max_bytes:
                raise ResourceExhausted(f"the manifest is over {max_bytes} bytes",
                                        "MANIFEST_TOO_LARGE")
            # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark.
            return data.decode("utf-8-sig"), path.parent
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest("cannot read the manifest as UTF-8 text", "BAD_MANIFEST"
                                 ) from exc

    def read_file(self, path: Path, max_bytes: int) -> bytes:
        """At most `max_bytes` of the regular file at `path`, opened beneath its root."""
        root = self.root_of(path)
        if root is None:
            raise InvalidRequest("the file left the input roots", "REFERENCE_OUTSIDE_INPUT_ROOTS")
        with os.fdopen(open_beneath(root, path.relative_to(root).parts), "rb") as handle:
            return handle.read(max_bytes)


def check_reference(text: str, name: str) -> None:
    try:
        size = len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate no file name can hold
        size = -1
    if not text or "\x00" in text or size < 0:
        raise InvalidRequest(f"{name} is empty or malformed", "BAD_REFERENCE")
    if size > MAX_REFERENCE_BYTES:
        raise InvalidRequest(f"{name} is over {MAX_REFERENCE_BYTES} bytes, longer than any "
                             "path the server can open", "REFERENCE_TOO_LONG")


def resolved_path(candidate: Path, name: str) -> Path:
    try:
        return candidate.resolve()
    except RuntimeError as exc:  # Python 3.11 and 3.12 raise this on a symlink loop
        raise InvalidRequest(f"{name} runs into a symlink loop", "SYMLINK_LOOP") from exc
    except OSError as exc:
        raise path_error(exc, name) from exc


def is_directory(path: Path, name: str) -> bool:
    try:
        return path.is_dir()
    except OSError as exc:  # is_dir() reports "no" for most errors, not for a name too long
        raise path_error(exc, name) from exc


def path_error(error: OSError, name: str) -> InvalidRequest:
    """A client's path the file system refused, as a stable reason without the path."""
    if error.errno == errno.ENAMETOOLONG:
        return InvalidRequest(f"{name} has a name too long for the file system",
                              "REFERENCE_TOO_LONG")
    if error.errno == errno.ELOOP:
        return InvalidRequest(f"{name} runs into a symlink loop", "SYMLINK_LOOP")
    return InvalidRequest(f"{name} cannot be resolved", "BAD_REFERENCE")


def open_beneath(root: Path, parts: Sequence[str]) -> int:
    """A read-only descriptor of the regular file `root/parts...`. Each component is opened
    with O_NOFOLLOW relative to the descriptor of the one before, so that no symbolic link is
    followed (ELOOP, refused as SYMLINK_REFUSED) and no path is looked up twice by name."""
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise InvalidRequest("the reference does not name a file", "NOT_A_REGULAR_FILE")
    directory = os.open(root, DIRECTORY_FLAGS)
    try:
        for part in parts[:-1]:
            inner = _open_component(part, DIRECTORY_FLAGS, directory)
            os.close(directory)
            directory = inner
        descriptor = _open_component(parts[-1], FILE_FLAGS, directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise InvalidRequest("the reference is not a regular file", "NOT_A_REGULAR_FILE")
    return descriptor


def _open_component(part: str, flags: int, directory: int) -> int:
    try:
        return os.open(part, flags, dir_fd=directory)
    except OSError as exc:
        # O_NOFOLLOW on a symbolic link fails with ELOOP, or ENOTDIR with O_DIRECTORY.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(part, directory):
            raise InvalidRequest("the file's path now runs through a symbolic link",
                                 "SYMLINK_REFUSED") from None
        raise


def _is_symlink(part: str, directory: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(part, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes of a file name that are not UTF-8 (Python carries them as
    surrogate escapes) become %XX, so that results, CSV files and messages can hold it."""
    raw = text.encode("utf-8", "surrogateescape")
    parts: list[str] = []
    while True:
        try:
            parts.append(raw.decode("utf-8"))
            return "".join(parts)
        except UnicodeDecodeError as bad:
            parts.append(raw[:bad.start].decode("utf-8"))
            parts.append("".join(f"%{byte:02X}" for byte in raw[bad.start:bad.end]))
            raw = raw[bad.end:]


def check_count(count: int, limit: int) -> None:
    if count > limit:
        raise ResourceExhausted(f"the job has more than {limit} images, the server's limit",
                                "TOO_MANY_IMAGES")


def manifest_paths(csv_text: str) -> list[str]:
    """The `path` column of a CSV with a header, or the first column of one without."""
    return [path for path, _ in manifest_rows(csv_text)]


def manifest_rows(csv_text: str) -> list[tuple[str, RowContext | None]]:
    """Each row's path (as manifest_paths) and its patient context from the optional `age`,
    `sex` and `site` columns of a header (None where the manifest has none of them)."""
    try:
        rows = [row for row in csv.reader(io.StringIO(csv_text.removeprefix("\ufeff")))
                if row and any(row)]
    except csv.Error as exc:  # its messages carry no data, e.g. "field larger than field limit"
        raise InvalidRequest(f"the manifest is not valid CSV: {exc}", "BAD_MANIFEST") from exc
    if not rows:
        raise InvalidRequest("the manifest lists no images", "EMPTY_MANIFEST")
    header = [cell.strip().lower() for cell in rows[0]]
    if "path" in header:
        column = header.index("path")
        rows = rows[1:]
    else:
        column, header = 0, []
    columns = [header.index(name) if name in header else None for name in CONTEXT_COLUMNS]
    listed = [(row[column].strip(), row_context(row, columns)) for row in rows
              if len(row) > column and row[column].strip()]
    if not listed:
        raise InvalidRequest("the manifest lists no images", "EMPTY_MANIFEST")
    return listed


def row_context(row: Sequence[str], columns: Sequence[int | None]) -> RowContext | None:
    """A row's context columns (RowContext's order) as written; None when it has none."""
    if all(index is None for index in columns):
        return None
    return RowContext(*(row[index].strip() if index is not None and index < len(row) else ""
                        for index in columns))


def open_checked(ref: ImageRef, roots: InputRoots, max_bytes: int) -> bytes:
    """Read one image for a worker, beneath its root (see open_beneath); OSError when
    unreadable. Reading max_bytes + 1 lets validation report IMAGE_TOO_LARGE without loading a
    huge file."""
    return roots.read_file(Path(ref.path), max_bytes + 1)
