"""How much accuracy each pruning criterion keeps before any fine-tuning, on the digits data.

    python train.py                                   # writes outputs/train/<run>/plain.safetensors
    PYTHONPATH=. python scripts/prune_scores.py outputs/train/<run>/plain.safetensors

Prunes the plain net to each MAC target with each channel score, without and with recalibration
on fixed training images (`prune.calibration_batches`, docs/pruning.md section 3a), and prints
the test and validation accuracy of each pruned net, untouched by fine-tuning, as a markdown
table (also written to --out as JSON; --results writes a results file, e.g.
docs/results/prune_scores.json, with the command, date and machine; --render re-renders the
block of docs/pruning.md from the committed one).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from repvgg_lab.studies import prune_scores
from repvgg_lab.studies.common import rendered, save_results, setup_logging, study_parser
from repvgg_lab.utils import torch_threads


def main(argv: list[str] | None = None) -> int:
    p = study_parser(__doc__, "prune_scores.json")
    p.add_argument("plain", type=Path, nargs="?", help="plain.safetensors of a digits run")
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--calibration-batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON rows (optional)")
    args = p.parse_args(argv)
    setup_logging(logging.WARNING)
    if args.render:
        print(prune_scores.render(rendered("prune_scores.json")))
        return 0
    if args.plain is None:
        p.error("give the plain.safetensors of a digits run (or --render)")
    if not args.plain.is_file():
        p.error(f"{args.plain}: no such file")
    if any(not 0.0 < t < 1.0 for t in args.targets):
        p.error(f"--targets must lie in (0, 1), got {args.targets}")
    with torch_threads(args.threads):
        results = prune_scores.run(
            args.plain, args.targets, args.calibration_batches, args.batch_size
        )
    print(prune_scores.render({"results": results}))
    if args.out:
        args.out.write_text(json.dumps(results["rows"], indent=2) + "\n")
    if args.results:
        save_results(args.results, results, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
