"""What the RM conversion costs: parameters, MACs and CPU latency of the plain nets.

Forms of each RMNet model: source (training form), bnfold (every BN folded, residual adds kept:
the fair baseline), plain (`repvgg_lab.reparameterize`) and rmnet (RMNet's layout built by our
converter, where it differs). Latency: fp32, inference mode, all forms of a model timed in
interleaved rounds (`repvgg_lab.utils.measure_latency`); ratios are paired per round.

    python scripts/rmnet_cost.py                       # counts + latency, b=1 and b=8, 2 threads
    python scripts/rmnet_cost.py --no-latency          # counts only (seconds)
    python scripts/rmnet_cost.py --no-latency --drift  # + conversion error, 3 seeds (minutes)
    python scripts/rmnet_cost.py --json outputs/rmnet_cost.json
    python scripts/rmnet_cost.py --drift --threads 1 --rmnet-form-latency \\
        --results docs/results/rmnet_cost.json          # the numbers in docs/rmnet.md
    python scripts/rmnet_cost.py --render              # re-render docs/rmnet.md's blocks
"""

from __future__ import annotations

import sys

from repvgg_lab.studies import rmnet_cost
from repvgg_lab.studies.common import rendered, save_results, setup_logging, study_parser
from repvgg_lab.utils import torch_threads


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, "rmnet_cost.json")
    parser.add_argument("--models", nargs="+", default=rmnet_cost.MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--drift", action="store_true", help="also measure conversion error")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rmnet-form-latency",
        action="store_true",
        help="also time RMNet's layout (ResNet-50 dense: ~1 GB, ~0.5 s a run)",
    )
    parser.add_argument("--json", default=None, help="write all numbers to this results file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(rmnet_cost.MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(rmnet_cost.MODELS)}")
    setup_logging()
    if args.render:
        record = rendered("rmnet_cost.json")
    else:
        with torch_threads(args.threads):
            results = rmnet_cost.run(
                args.models,
                args.size,
                batches=() if args.no_latency else tuple(args.batch),
                runs=args.runs,
                warmup=args.warmup,
                seeds=tuple(args.seeds) if args.drift else None,
                rmnet_form_latency=args.rmnet_form_latency,
            )
        record = {"results": results, "machine": {"threads": args.threads}}
        for path in filter(None, (args.json, args.results)):
            save_results(path, results, threads=args.threads)
    print(rmnet_cost.render_cost(record))
    if args.drift or args.render:
        print("\n" + rmnet_cost.render_drift(record))
    if not args.no_latency or args.render:
        print("\n" + rmnet_cost.render_latency(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
