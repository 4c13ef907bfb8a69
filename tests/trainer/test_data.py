"""Loading, validating and splitting HAM10000-like data."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from dermserve.trainer.data import (
    HAM10000_LABELS,
    Record,
    Split,
    label_indices,
    load_records,
    split_by_lesion,
)
from dermserve.trainer.errors import DataError
from tests.trainer.conftest import HEADER, write_ham_dataset, write_metadata


def test_loads_every_record_with_its_metadata(ham_dir: Path) -> None:
    records = load_records(ham_dir)
    assert len(records) == 7 * 4 * 2
    first = records[0]
    assert first.path == ham_dir / "images" / f"{first.image_id}.jpg"
    assert first.age is None  # lesion 0 has an empty age
    assert records[2].age == 31.0
    assert list(label_indices(records[:1], HAM10000_LABELS)) == [0]


def test_kaggle_two_folder_layout_loads(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    write_ham_dataset(root, folders=("HAM10000_images_part_1", "HAM10000_images_part_2"))
    (root / "metadata.csv").rename(root / "HAM10000_metadata.csv")
    records = load_records(root)
    assert len(records) == 56
    assert {r.path.parent.name for r in records} == {"HAM10000_images_part_1",
                                                     "HAM10000_images_part_2"}


def test_images_next_to_the_metadata_load(tmp_path: Path) -> None:
    write_ham_dataset(tmp_path / "flat", folders=(".",))
    assert len(load_records(tmp_path / "flat")) == 56


def test_missing_image_is_named(ham_dir: Path) -> None:
    (ham_dir / "images" / "ISIC_0100100.jpg").unlink()
    with pytest.raises(DataError, match="1 image.*ISIC_0100100"):
        load_records(ham_dir)


def test_unknown_dx_is_named(tmp_path: Path) -> None:
    rows = write_ham_dataset(tmp_path)
    rows[3]["dx"] = "melanoma"
    write_metadata(tmp_path / "metadata.csv", rows)
    with pytest.raises(DataError, match="unknown dx code.*melanoma"):
        load_records(tmp_path)


def test_duplicate_image_id_is_named(tmp_path: Path) -> None:
    rows = write_ham_dataset(tmp_path)
    write_metadata(tmp_path / "metadata.csv", [*rows, rows[5]])
    with pytest.raises(DataError, match=f"duplicate image_id.*{rows[5]['image_id']}"):
        load_records(tmp_path)


def test_missing_column_is_named(tmp_path: Path) -> None:
    rows = write_ham_dataset(tmp_path)
    write_metadata(tmp_path / "metadata.csv", rows, tuple(h for h in HEADER if h != "lesion_id"))
    with pytest.raises(DataError, match="missing column.*lesion_id"):
        load_records(tmp_path)


def test_empty_csv_fails(tmp_path: Path) -> None:
    write_ham_dataset(tmp_path)
    write_metadata(tmp_path / "metadata.csv", [])
    with pytest.raises(DataError, match="no rows"):
        load_records(tmp_path)
    (tmp_path / "metadata.csv").write_text("")
    with pytest.raises(DataError, match="missing column"):
        load_records(tmp_path)


def test_missing_metadata_or_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no metadata file"):
        load_records(tmp_path)


def test_byte_identical_images_within_a_lesion_are_fine(ham_dir: Path) -> None:
    images = ham_dir / "images"
    shutil.copyfile(images / "ISIC_0000000.jpg", images / "ISIC_0000001.jpg")
    assert len(load_records(ham_dir)) == 56


def _big_records(tmp_path: Path) -> list[Record]:
    write_ham_dataset(tmp_path / "big", lesions_per_class=20, images_per_lesion=2, size=(4, 3))
    return load_records(tmp_path / "big")


def test_split_leaks_no_lesion_and_covers_every_image(tmp_path: Path) -> None:
    records = _big_records(tmp_path)
    split = split_by_lesion(records, seed=1)
    lesions = {name: {r.lesion_id for r in part} for name, part in split.parts().items()}
    assert not lesions["train"] & lesions["val"]
    assert not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]
    ids = [r.image_id for part in split.parts().values() for r in part]
    assert sorted(ids) == sorted(r.image_id for r in records)


def test_split_is_stratified(tmp_path: Path) -> None:
    split = split_by_lesion(_big_records(tmp_path), seed=2, val_fraction=0.2, test_fraction=0.25)
    for name, fraction in (("val", 0.2), ("test", 0.25)):
        counts = Counter(r.dx for r in split.parts()[name])
        for label in HAM10000_LABELS:  # 20 lesions x 2 images per class
            assert abs(counts[label] / 40 - fraction) <= 0.05, (name, label, counts)


def test_small_classes_still_reach_every_split(ham_dir: Path) -> None:
    split = split_by_lesion(load_records(ham_dir), seed=0)
    for part in split.parts().values():
        assert {r.dx for r in part} == set(HAM10000_LABELS)


def test_split_is_reproducible_per_seed(tmp_path: Path) -> None:
    records = _big_records(tmp_path)
    assert split_by_lesion(records, seed=3) == split_by_lesion(records, seed=3)
    assert split_by_lesion(records, seed=3).test != split_by_lesion(records, seed=4).test


def test_split_manifest_round_trips(ham_dir: Path, tmp_path: Path) -> None:
    records = load_records(ham_dir)
    split = split_by_lesion(records, seed=5)
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json", records) == split


def test_manifest_that_does_not_match_the_data_fails(ham_dir: Path, tmp_path: Path) -> None:
    records = load_records(ham_dir)
    split_by_lesion(records, seed=5).save(tmp_path / "split.json")
    with pytest.raises(DataError, match="does not match"):
        Split.load(tmp_path / "split.json", records[1:])


def test_bad_fractions_fail() -> None:
    with pytest.raises(DataError, match="fractions"):
        split_by_lesion([], seed=0, val_fraction=0.6, test_fraction=0.5)


def test_dataverse_tab_metadata_loads(tmp_path: Path) -> None:
    rows = write_ham_dataset(tmp_path, folders=("HAM10000_images_part_1", "HAM10000_images_part_2"))
    (tmp_path / "metadata.csv").unlink()
    lines = ["\t".join(f'"{h}"' for h in HEADER)]
    lines += ["\t".join(f'"{row[h]}"' if h != "age" else row[h] for h in HEADER) for row in rows]
    (tmp_path / "HAM10000_metadata.tab").write_text("\n".join(lines) + "\n")
    records = load_records(tmp_path)
    assert [r.image_id for r in records] == [row["image_id"] for row in rows]
    assert records[2].age == 31.0 and records[0].sex == "male"
