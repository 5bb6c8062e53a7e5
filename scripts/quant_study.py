"""The int8 study over a `python train.py -m sweep=quant` folder (docs/quantization.md).

python scripts/quant_study.py outputs/quant/<time> --results docs/results/quant_study.json
python scripts/render_docs.py     # re-render the docs' blocks from the results file"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from repvgg_lab.results import write_results
from repvgg_lab.studies.quant_study import render_accuracy, run
from repvgg_lab.utils import torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder of sweep=quant")
    parser.add_argument("--results", type=Path, required=True, help="results file to write")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--no-speed", action="store_true", help="skip the 224x224 latency")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    with torch_threads(args.threads):
        results = run(args.sweep_dir, speed=not args.no_speed)
    write_results(args.results, results, threads=args.threads)
    print(render_accuracy({"results": results}))


if __name__ == "__main__":
    main()
