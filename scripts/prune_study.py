"""Accuracy, MACs, parameters and CPU latency of RepVGG-A0 pruned after sparsity training on the
digits data, for several MAC-reduction targets, through the real training pipeline.

    PYTHONPATH=. python scripts/prune_study.py              # the study in docs/pruning.md
    PYTHONPATH=. python scripts/prune_study.py --quick      # a smoke-sized variant (minutes)

Per seed: a baseline without gates, a gated net trained with the L1 gate penalty, then each
target pruned from the gated net's last checkpoint and fine-tuned (repvgg_lab/studies/
prune_study.py). Writes results.json (with the command, date and machine) and table.md to --out;
--results also writes the results file the docs are rendered from (docs/results/prune_study.json);
--render re-renders docs/pruning.md's blocks from that committed file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from repvgg_lab.results import read_results
from repvgg_lab.studies import prune_study
from repvgg_lab.studies.common import ROOT, rendered, save_results, setup_logging, study_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = study_parser(__doc__, "prune_study.json")
    d = prune_study.Settings()
    p.add_argument("--quick", action="store_true", help="1 seed, 3+1 epochs, targets 0 and 0.3")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    p.add_argument("--epochs", type=int, default=d.epochs, help="sparsity-training epochs")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--distill", type=float, default=d.distill, help="finetune.distill weight")
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help="per 256 images (SGD)")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="lambda of the L1 penalty")
    p.add_argument("--targets", type=float, nargs="+", default=d.targets)
    p.add_argument("--score", default=d.score, choices=["l2", "l2_next"])
    p.add_argument("--calibration-batches", type=int, default=d.calibration_batches)
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument("--latency-sizes", type=int, nargs="*", default=None, help="[img-size, 224]")
    p.add_argument("--latency-rounds", type=int, default=d.latency_rounds)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (all steps)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "prune_study")
    p.add_argument("--report-only", action="store_true", help="rebuild table.md from --out")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.finetune_epochs = args.seeds[:1], 3, 1
        args.targets, args.latency_rounds = [0.0, 0.3], 5
    if args.latency_sizes is None:
        args.latency_sizes = [args.img_size, 224]
    if any(not 0.0 <= t < 1.0 for t in args.targets):
        p.error(f"--targets must lie in [0, 1), got {args.targets}")
    return args


def table_md(record: dict) -> str:
    """table.md: accuracy, cost and the acceptance check."""
    blocks = (prune_study.render_accuracy, prune_study.render_cost, prune_study.render_acceptance)
    return "\n\n".join(render(record) for render in blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    path = args.out / "results.json"
    if args.render:
        record = rendered("prune_study.json")
    elif args.report_only:
        record = read_results(path) if path.is_file() else {}
        if "results" not in record:
            print(f"error: {path}: no results record (run the study first)", file=sys.stderr)
            return 2
    else:
        fields = {f.name for f in dataclasses.fields(prune_study.Settings)}
        settings = prune_study.Settings(**{k: v for k, v in vars(args).items() if k in fields})
        settings.out = str(args.out)
        results = prune_study.run(settings)
        for target in filter(None, (path, args.results)):
            save_results(target, results, threads=args.threads)
        record = read_results(path)
    text = table_md(record)
    if not args.render:
        (args.out / "table.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
