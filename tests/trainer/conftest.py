"""Synthetic HAM10000-like data sets: tiny images, several images per lesion, every class."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermserve.trainer.data import HAM10000_LABELS

HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
CLASS_COLOURS = {label: (30 + 30 * k, 200 - 25 * k, (70 * k) % 256)
                 for k, label in enumerate(HAM10000_LABELS)}
"""Each class gets its own mean colour, so that even the tiny network can learn something."""


def write_ham_dataset(root: Path, lesions_per_class: int = 4, images_per_lesion: int = 2,
                      folders: tuple[str, ...] = ("images",), size: tuple[int, int] = (20, 15),
                      seed: int = 0) -> list[dict[str, str]]:
    """Write metadata.csv and JPEG images under `root` (spread over `folders`); return the rows."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    for k, label in enumerate(HAM10000_LABELS):
        for lesion in range(lesions_per_class):
            lesion_id = f"HAM_{k:02d}{lesion:04d}"
            for image in range(images_per_lesion):
                image_id = f"ISIC_{k:02d}{lesion:03d}{image:02d}"
                rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": label,
                             "dx_type": "histo", "age": "" if lesion == 0 else str(30 + lesion),
                             "sex": ("male", "female", "unknown")[lesion % 3],
                             "localization": ("back", "face", "trunk")[image % 3]})
    for n, row in enumerate(rows):
        folder = root / folders[n % len(folders)]
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array(CLASS_COLOURS[row["dx"]], np.float64)
        pixels = np.clip(colour + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{row['image_id']}.jpg")
    write_metadata(root / "metadata.csv", rows)
    return rows


def write_metadata(path: Path, rows: list[dict[str, str]],
                   header: tuple[str, ...] = HEADER) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def ham_dir(tmp_path: Path) -> Path:
    """A small HAM-like data set: 7 classes x 4 lesions x 2 images of 20x15 px."""
    write_ham_dataset(tmp_path / "ham")
    return tmp_path / "ham"
