"""Peak memory and wall time of deploy.py's int8 step as the val split and calibration grow.

    python scripts/deploy_memory.py --out docs/results/deploy_memory.json

Five deploys of a fresh repvgg_a0 (10 classes) on generated ImageNet-style trees, each in its own
interpreter: 1x and 4x the validation images, 1x and 4x the calibration batches (minmax and
percentile). The ratios say whether the peak RSS stays within 10 % and the time grows at most
linearly. The code is in repvgg_lab.bench.deploy_memory.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from repvgg_lab.bench.deploy_memory import run_deploy_memory, write_deploy_memory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/deploy_memory.json"))
    parser.add_argument("--val-images", type=int, nargs=2, default=[100, 400], metavar="N")
    parser.add_argument("--calibration-batches", type=int, nargs=2, default=[4, 16], metavar="B")
    parser.add_argument("--input-size", type=int, default=224, help="deploy's input_size")
    parser.add_argument("--threads", type=int, default=1, help="threads of each deploy")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="JPEG size (default: ImageNet's)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra deploy.py override for every run (repeatable), e.g. verify.workers=0",
    )
    parser.add_argument("--workdir", type=Path, help="keep the trees and runs here (reused)")
    args = parser.parse_args()
    if min(args.val_images + args.calibration_batches + [args.input_size, args.threads]) < 1:
        parser.error("sizes, batches and threads must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = run_deploy_memory(
        tuple(args.val_images),
        tuple(args.calibration_batches),
        args.input_size,
        args.workdir,
        args.threads,
        tuple(args.image_size) if args.image_size else None,
        args.override,
    )
    write_deploy_memory(args.out, results, threads=args.threads)
    print(json.dumps(results["ratios"], indent=2))


if __name__ == "__main__":
    main()
