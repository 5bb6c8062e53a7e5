"""The GPU check's measurements: python scripts/gpu_check.py --out gpu_check.json [--dry-run]

Runs on a CUDA machine (scripts/gpu_check.sh runs the gpu-marked tests first and passes their
log); --dry-run does the same on the CPU with tiny sizes, to test the code where no GPU is."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from repvgg_lab.bench.gpu_check import DRY_RUN, GPU_CHECK, run_gpu_check
from repvgg_lab.results import write_results


def _tests(log: Path | None) -> dict[str, str] | None:
    """The last line of the gpu-marked tests' pytest log (their pass/fail count)."""
    if log is None or not log.is_file():
        return None
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {"summary": lines[-1] if lines else "no output"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file to write")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: plumbing only")
    parser.add_argument("--pytest-log", type=Path, help="log of the gpu-marked tests")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, settings = ("cpu", DRY_RUN) if args.dry_run else ("cuda", GPU_CHECK)
    results = run_gpu_check(device, settings)
    results["gpu_tests"] = _tests(args.pytest_log)
    results["dry_run"] = args.dry_run
    write_results(args.out, results)
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
