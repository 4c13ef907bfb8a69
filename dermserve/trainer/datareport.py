"""The data report: class, age, sex and localization distributions per split (Markdown + PNG)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dermserve.trainer.data import Record, Split
from dermserve.trainer.plots import grouped_bars

logger = logging.getLogger(__name__)

AGE_BIN_YEARS = 10  # decades: the metadata gives ages in steps of 5, often rounded
UNKNOWN = "unknown"


def age_bin(record: Record) -> str:
    if record.age is None:
        return UNKNOWN
    start = int(record.age // AGE_BIN_YEARS * AGE_BIN_YEARS)
    return f"{start:02d}-{start + AGE_BIN_YEARS - 1:02d}"


ATTRIBUTES: dict[str, Callable[[Record], str]] = {
    "dx": lambda record: record.dx,
    "age": age_bin,
    "sex": lambda record: record.sex,
    "localization": lambda record: record.localization,
    "dx_type": lambda record: record.dx_type,
}
"""What the report counts, by name: each is a function of one record."""


def categories(attribute: str, split: Split) -> list[str]:
    """The values an attribute takes, labels in the split's order, the rest sorted."""
    if attribute == "dx":
        return list(split.labels)
    values = {ATTRIBUTES[attribute](r) for part in split.parts().values() for r in part}
    return sorted(values, key=lambda value: (value == UNKNOWN, value))


def counts(split: Split) -> dict[str, dict[str, dict[str, int]]]:
    """attribute -> split name -> value -> number of images."""
    return {attribute: {name: {value: Counter(describe(r) for r in part)[value]
                               for value in categories(attribute, split)}
                        for name, part in split.parts().items()}
            for attribute, describe in ATTRIBUTES.items()}


def summary(split: Split) -> dict[str, Any]:
    """Image and lesion counts per split, and the lesion-overlap check."""
    lesions = {name: {r.lesion_id for r in part} for name, part in split.parts().items()}
    names = list(lesions)
    overlap = sum(len(lesions[a] & lesions[b]) for i, a in enumerate(names) for b in names[i + 1:])
    return {"seed": split.seed,
            "images": {name: len(part) for name, part in split.parts().items()},
            "lesions": {name: len(ids) for name, ids in lesions.items()},
            "lesions_in_two_splits": overlap,
            "fractions": {"val": split.val_fraction, "test": split.test_fraction}}


def _table(title: str, table: dict[str, dict[str, int]]) -> list[str]:
    names = list(table)
    values = list(next(iter(table.values())))
    lines = [f"### {title}", "", "| value | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for value in values:
        lines.append(f"| {value} | " + " | ".join(str(table[n][value]) for n in names) + " |")
    return [*lines, ""]


def _shares(table: dict[str, int]) -> list[float]:
    total = max(1, sum(table.values()))
    return [count / total for count in table.values()]


def write_data_report(split: Split, out_dir: Path, source: str = "") -> Path:
    """Write `data_report.md`, `data_report.json` and one PNG per attribute; return the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, head = counts(split), summary(split)
    (out_dir / "data_report.json").write_text(
        json.dumps({"summary": head, "counts": tables}, indent=1), encoding="utf-8")
    lines = ["# Data report", "", f"Source: `{source}`" if source else "",
             f"Split seed {head['seed']}, grouped by lesion_id and stratified by dx; "
             f"lesions found in two splits: **{head['lesions_in_two_splits']}**.", "",
             "| split | images | lesions |", "|---|---:|---:|"]
    lines += [f"| {name} | {head['images'][name]} | {head['lesions'][name]} |"
              for name in head["images"]]
    lines.append("")
    for attribute, table in tables.items():
        image = grouped_bars(out_dir / f"data_{attribute}.png", f"{attribute} per split (share)",
                             list(next(iter(table.values()))),
                             {name: _shares(values) for name, values in table.items()},
                             "share of the split's images")
        lines += [f"## {attribute}", "", f"![{attribute}]({image.name})", ""]
        lines += _table(f"{attribute}: images per split", table)
    path = out_dir / "data_report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("data report written to %s", path)
    return path


def record_summary(records: Sequence[Record]) -> dict[str, int]:
    """Images and lesions of a record list (for the model card)."""
    return {"images": len(records), "lesions": len({r.lesion_id for r in records})}
