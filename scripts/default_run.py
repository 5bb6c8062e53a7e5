"""Run the default job (`python train.py`) timed, and record it in docs/results/default_run.json.

    python scripts/default_run.py [--out docs/results/default_run.json] [hydra overrides ...]

The README's paragraph on the default job is rendered from that file
(`python scripts/render_docs.py`)."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from repvgg_lab.results import write_results
from repvgg_lab.studies.default_run import run_default_job

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/results/default_run.json")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="default_run-") as tmp:
        results = run_default_job(REPO, Path(tmp) / "run", args.overrides)
    write_results(args.out, results)
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
