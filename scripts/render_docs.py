"""Rewrite the generated blocks of README.md and docs/*.md from the files in docs/results/.

python scripts/render_docs.py           # rewrite
python scripts/render_docs.py --check   # exit 1 if a block differs from its results file

Either way it lists the prose sentences (repvgg_lab/studies/prose*.py) that the results no
longer support, and exits 1 if there are any: those need an edit by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repvgg_lab.studies.docs import render_docs
from repvgg_lab.studies.prose import prose_problems

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = parser.parse_args()
    changed = render_docs(REPO, write=not args.check)
    for path in changed:
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(REPO)}")
    stale = prose_problems(REPO)
    for problem in stale:
        print(f"stale prose: {problem}")
    return 1 if (args.check and changed) or stale else 0


if __name__ == "__main__":
    sys.exit(main())
