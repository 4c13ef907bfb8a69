"""Reference resolution and manifests, on the file system only."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dermserve.batch.references import ImageRef, InputRoots, manifest_paths, open_checked, printable
from dermserve.core.errors import InvalidRequest, ResourceExhausted
from tests.worker.conftest import write_images


def test_manifest_with_a_path_column_or_without_a_header() -> None:
    assert manifest_paths("lesion_id,path\nL1,a.jpg\n\nL2, b.png \n") == ["a.jpg", "b.png"]
    assert manifest_paths("a.jpg\nsub/b.jpg\n") == ["a.jpg", "sub/b.jpg"]
    for empty in ("", "path\n", "\n\n"):
        with pytest.raises(InvalidRequest):
            manifest_paths(empty)


def test_directories_expand_sorted_and_bounded(tmp_path: Path) -> None:
    write_images(tmp_path / "root" / "b", 2)
    write_images(tmp_path / "root" / "a", 2)
    (tmp_path / "root" / "a" / "notes.txt").write_text("not an image")
    roots = InputRoots([tmp_path / "root"])
    refs = roots.expand(["."], limit=10)
    assert [Path(r.path).relative_to(roots.roots[0]).as_posix() for r in refs] == [
        "a/img_0000.jpg", "a/img_0001.jpg", "b/img_0000.jpg", "b/img_0001.jpg"]
    with pytest.raises(ResourceExhausted):
        roots.expand(["."], limit=3)
    with pytest.raises(InvalidRequest):
        InputRoots([]).expand(["a"], limit=3)  # no roots: only inline images


def test_a_folder_swapped_for_a_symlink_after_submission_is_refused_at_read_time(
        tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_images(root / "sub", 1)
    write_images(outside, 1)
    roots = InputRoots([root])
    ref = roots.expand(["sub/img_0000.jpg"], limit=1)[0]
    assert open_checked(ref, roots, 10_000_000)[:3] == b"\xff\xd8\xff"
    (root / "sub" / "img_0000.jpg").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside, target_is_directory=True)  # same path, now outside
    with pytest.raises(InvalidRequest):
        open_checked(ref, roots, 10_000_000)


def test_the_walk_refuses_a_symlinked_component_even_one_leading_inside_the_roots(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_images(root / "sub", 1)
    write_images(root / "other", 2)
    roots = InputRoots([root])
    ref = roots.expand(["sub/img_0000.jpg"], limit=1)[0]
    (root / "sub").rename(root / "sub-moved")
    (root / "sub").symlink_to(root / "other", target_is_directory=True)  # inside, but swapped in
    with pytest.raises(InvalidRequest) as caught:
        open_checked(ref, roots, 10_000_000)
    assert caught.value.reason == "SYMLINK_REFUSED"
    last = roots.expand(["other/img_0001.jpg"], limit=1)[0]
    (root / "other" / "img_0001.jpg").unlink()
    (root / "other" / "img_0001.jpg").symlink_to(root / "sub-moved" / "img_0000.jpg")
    with pytest.raises(InvalidRequest) as caught:  # the last component, too
        open_checked(last, roots, 10_000_000)
    assert caught.value.reason == "SYMLINK_REFUSED"


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "pipe.jpg")
    roots = InputRoots([root])
    ref = roots.expand(["pipe.jpg"], limit=1)[0]
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(ref, roots)), daemon=True)
    reader.start()
    reader.join(timeout=30)  # the old open() blocked here until a writer came, forever
    assert [getattr(error, "reason", None) for error in outcome] == ["NOT_A_REGULAR_FILE"]


def _error_of(ref: ImageRef, roots: InputRoots) -> BaseException:
    try:
        open_checked(ref, roots, 1000)
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever it was
        return exc
    raise AssertionError("a FIFO was read as an image")


def test_printable_keeps_utf8_and_percent_encodes_other_bytes() -> None:
    latin1 = os.fsdecode(b"caf\xe9 \xc3\xa9t\xe9.jpg")
    assert printable(latin1) == "caf%E9 \u00e9t%E9.jpg"
    assert printable("d\u00e9j\u00e0 100%.jpg") == "d\u00e9j\u00e0 100%.jpg"


def test_manifest_rows_carry_the_optional_context_columns_as_written() -> None:
    from dermserve.batch.references import RowContext, manifest_rows

    rows = manifest_rows("site,path,age\nback,a.jpg,45\n,b.jpg,\nface,c.jpg\n")
    assert rows == [("a.jpg", RowContext("45", "", "back")), ("b.jpg", RowContext()),
                    ("c.jpg", RowContext("", "", "face"))]
    assert manifest_rows("path,lesion_id\na.jpg,L1\n") == [("a.jpg", None)]
    assert manifest_rows("a.jpg\n") == [("a.jpg", None)]  # no header: no context columns


def test_chunk_inputs_keep_each_rows_context(tmp_path: Path) -> None:
    from dermserve.batch.references import RowContext
    from dermserve.batch.results import ResultStore

    store = ResultStore(tmp_path)
    refs = [ImageRef("a.jpg", "/in/a.jpg", RowContext("45", "male", "trunk")),
            ImageRef("b.jpg", "/in/b.jpg")]
    store.write_chunk_inputs("job", 0, refs)
    assert store.read_chunk_inputs("job", 0) == refs
    # A chunk written before contexts existed still reads.
    store.chunk_path("job", 1, ".input.json").write_text('[["a.jpg", "/in/a.jpg"]]')
    assert store.read_chunk_inputs("job", 1) == [ImageRef("a.jpg", "/in/a.jpg")]
