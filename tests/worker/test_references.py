"""Reference resolution and manifests, on the file system only."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidRequest, ResourceExhausted
from tests.worker.conftest import write_images
from worker.references import InputRoots, manifest_paths, open_checked


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
