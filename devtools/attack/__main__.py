"""`python -m devtools.attack` / `make attack`: run the hostile corpus; exit 1 unless it passed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devtools.attack.families import FAMILIES
from devtools.attack.runner import run_suite, write_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.attack", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small corpus (make test)")
    parser.add_argument("--workdir", type=Path, default=Path("var/attack"),
                        help="where the stack, its certificates and logs live (wiped first)")
    parser.add_argument("--out", type=Path, default=Path("var/attack/summary.json"))
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES),
                        help="run only these families (repeatable; default: all)")
    args = parser.parse_args(argv)
    summary = run_suite(args.workdir, args.quick, args.family or tuple(FAMILIES))
    write_summary(summary, args.out)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
