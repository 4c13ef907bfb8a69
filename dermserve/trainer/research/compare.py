"""Do two versions serve the same answers?
`python -m dermserve.trainer.research.compare --version-dir A
--version-dir B --data-dir DIR [--images N]` classifies the first N test images of A's split
(`assets.extra/split.json`) with both versions' `serving_default`, through the service's
preprocessing, and prints the largest absolute differences of their probabilities and OOD scores
and whether their configs are equal, as JSON. Used to check a re-export (version 3 is version 2's
weights re-exported with the `explain` signature)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermserve.trainer.served import ServedVersion, read_images

DEFAULT_IMAGES = 200  # test images compared: enough to see any drift, a minute on two CPUs
SPLIT_PATH = Path("assets.extra") / "split.json"


def test_image_paths(version_dir: Path, data_dir: Path, count: int) -> list[Path]:
    split = json.loads((version_dir / SPLIT_PATH).read_text(encoding="utf-8"))
    ids = [entry["image_id"] for entry in split["splits"]["test"][:count]]
    return [data_dir / "images" / f"{image_id}.jpg" for image_id in ids]


def compare(first: Path, second: Path, data_dir: Path, count: int) -> dict[str, Any]:
    a, b = ServedVersion(first), ServedVersion(second)
    if a.config.input != b.config.input:
        raise SystemExit(f"{first} and {second} take different inputs")
    batch = a.inputs(read_images(test_image_paths(first, data_dir, count)))
    probabilities_a, ood_a = a.classify_arrays(batch)
    probabilities_b, ood_b = b.classify_arrays(batch)
    return {"versions": [str(first), str(second)], "images": len(batch),
            "max_abs_probability_diff": float(np.abs(probabilities_a - probabilities_b).max()),
            "max_abs_ood_score_diff": float(np.abs(ood_a - ood_b).max()),
            "same_top_class": bool((probabilities_a.argmax(1) == probabilities_b.argmax(1)).all()),
            "same_config": a.config == b.config}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dermserve.trainer.research.compare",
                                     description=__doc__)
    parser.add_argument("--version-dir", type=Path, action="append", required=True,
                        help="a version directory (give exactly two)")
    parser.add_argument("--data-dir", type=Path, required=True, help="HAM10000 (with images/)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    args = parser.parse_args(argv)
    if len(args.version_dir) != 2:
        parser.error("give --version-dir exactly twice")
    first, second = args.version_dir
    print(json.dumps(compare(first, second, args.data_dir, args.images), indent=2))


if __name__ == "__main__":
    main()
