"""The project's benchmarks: conversion time, CPU inference latency, training overhead, GPU speed.

    python scripts/bench.py --quick --out docs/results/benchmarks.json    # <= 10 min, 2 cores
    python scripts/bench.py --render docs/results/benchmarks.json   # -> docs/benchmarks.md + .png
    python scripts/bench.py --quick --out docs/results/benchmarks.json --render   # both
    python scripts/bench.py --out full.json                         # full run (tens of minutes)

Sections (--sections): convert, latency, train, gpu (only where CUDA is available), and, only
when asked for, branch_cost (train-time branches vs the plain net; 224 px takes a long while) and
data (the ImageNet loader on a generated tree; alone, into docs/results/data.json, docs/data.md).
The code is in repvgg_lab.bench; docs/benchmarks.md describes the method.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from repvgg_lab.bench.machine import cores
from repvgg_lab.bench.render import render
from repvgg_lab.bench.run import run_benchmarks, write_report
from repvgg_lab.bench.settings import DEFAULT_SECTIONS, PROFILES, SECTIONS

log = logging.getLogger("bench")


def _parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="fewer rounds (<= 10 min, 2 cores)")
    profile.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    parser.add_argument(
        "--render",
        nargs="?",
        const=True,
        default=None,
        metavar="JSON",
        help="write the markdown and plot from JSON (alone: render only; bare with --out: "
        "render the new results)",
    )
    parser.add_argument("--md", type=Path, help="markdown to write (default: docs/<name>.md)")
    parser.add_argument("--png", type=Path, help="plot to write (default: docs/<name>.png)")
    parser.add_argument(
        "--threads", type=int, default=cores(), help="torch / ONNX Runtime intra-op threads"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default: the profile's); 'none' skips torch.compile",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement wait up to S s for other processes to use < 10%% CPU",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks and/or render the docs from a results file."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if isinstance(args.render, str) and args.out is None:
        log.info("wrote %s", render(Path(args.render), args.md, args.png))
        return
    if args.out is None:
        parser.error("--out FILE.json is required to run the benchmarks")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if "data" in args.sections and len(args.sections) > 1:
        parser.error("run --sections data alone: it has its own results file and doc")
    settings = PROFILES["quick" if args.quick else "smoke" if args.smoke else "full"]
    if args.compile_backend is not None:
        backend = None if args.compile_backend == "none" else args.compile_backend
        settings = replace(settings, compile_backend=backend)
    results = run_benchmarks(settings, tuple(args.sections), args.threads, args.wait_quiet)
    log.info("wrote %s", write_report(args.out, results, args.threads))
    if args.render is not None:
        json_path = args.out if args.render is True else Path(args.render)
        log.info("wrote %s", render(json_path, args.md, args.png))


if __name__ == "__main__":
    main()
