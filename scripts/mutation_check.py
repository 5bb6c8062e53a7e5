"""Apply each mutation of repvgg_lab/studies/mutations.py to a copy of the tree and run its tests.

    python scripts/mutation_check.py                  # all; prints caught / missed per change
    python scripts/mutation_check.py --only EMA --out /tmp/mutations.json

Exit status 0 when every mutation is caught, 1 otherwise (missed, stale or an error)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from repvgg_lab.studies.mutation import check, table
from repvgg_lab.studies.mutations import MUTATIONS

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="+", default=None, help="mutations whose name has one of these")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each test run")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--out", type=Path, default=None, help="rows as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    chosen = [
        m for m in MUTATIONS if not args.only or any(s.lower() in m.name.lower() for s in args.only)
    ]
    if args.list or not chosen:
        print("\n".join(f"{m.name}  ->  {' '.join(m.tests)}" for m in MUTATIONS))
        return 0 if chosen else 2
    rows = check(ROOT, chosen, threads=args.threads)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["verdict"] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
