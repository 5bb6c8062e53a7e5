"""Rewrite the generated blocks of README.md and docs/*.md from the files in docs/results/.

python scripts/render_docs.py           # rewrite
python scripts/render_docs.py --check   # exit 1 if a block differs from its results file"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repvgg_lab.studies.docs import render_docs

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = parser.parse_args()
    changed = render_docs(REPO, write=not args.check)
    for path in changed:
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(REPO)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
