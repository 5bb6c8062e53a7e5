"""Copy an ImageFolder tree with every image shrunk to a maximum side, as JPEG (docs/data.md).

    python scripts/resize_imagefolder.py /data/imagenet /scratch/imagenet256 --max-side 256

Keeps the relative paths (split and class folders); a non-JPEG image becomes <stem>.jpg. Runs in
parallel, resumes where a killed run stopped (rerun the same command), and ends with a summary
line. Exit status: 0 when every image is written, 1 when some failed (listed), 2 for bad input.
The rules are in repvgg_lab.data.resize.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from repvgg_lab.data.resize import resize_tree
from repvgg_lab.errors import InputError

log = logging.getLogger("resize_imagefolder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path, help="the ImageFolder tree to copy (e.g. root/)")
    parser.add_argument("dst", type=Path, help="where the copy goes (created; outside SRC)")
    parser.add_argument("--max-side", type=int, default=256, help="longest side, px (256)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (90)")
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes (all cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        summary = resize_tree(
            args.src, args.dst, args.max_side, args.quality, args.workers, not args.no_progress
        )
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, error in summary.failed:
        log.error("failed: %s: %s", name, error)
    log.info("%s", summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
