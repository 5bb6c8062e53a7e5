"""Train-time branches on an ordinary CNN: `small_cnn` trained plain and with each branch set on
the digits data through the real pipeline, then deployed as the same plain net.

    PYTHONPATH=. python scripts/any_cnn.py --results docs/results/any_cnn.json  # docs/any_cnn.md
    PYTHONPATH=. python scripts/any_cnn.py --quick      # one seed, 2 epochs (a few minutes)
    PYTHONPATH=. python scripts/any_cnn.py --render     # re-render docs/any_cnn.md's table

Each run is `python train.py model=small_cnn model.model_kwargs.branches=B
model.model_kwargs.branch_mode=M seed=S` (M: offline, online) in a fresh process
(repvgg_lab/studies/any_cnn.py). Writes results.json (with the command, date and machine) to
--out; --results also writes the committed results file the docs are rendered from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from repvgg_lab.results import read_results
from repvgg_lab.studies import any_cnn
from repvgg_lab.studies.common import ROOT, rendered, save_results, setup_logging, study_parser


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, "any_cnn.json")
    d = any_cnn.Settings()
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--branches", nargs="+", default=d.branches)
    parser.add_argument("--modes", nargs="+", default=d.modes, choices=["offline", "online"])
    parser.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads per run")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "any_cnn")
    args = parser.parse_args(argv)
    known = any_cnn.BRANCH_CHOICES
    if "none" not in args.branches or not set(args.branches) <= set(known):
        parser.error(f"--branches must include none and be among {', '.join(known)}")
    setup_logging()
    if args.render:
        record = rendered("any_cnn.json")
    else:
        if args.quick:
            args.seeds, args.epochs = args.seeds[:1], 2
        settings = any_cnn.Settings(
            args.seeds, args.epochs, args.branches, args.threads, str(args.out), args.modes
        )
        results = any_cnn.run(settings)
        for target in filter(None, (args.out / "results.json", args.results)):
            save_results(target, results, threads=args.threads)
        record = read_results(args.out / "results.json")
    sys.stdout.write(any_cnn.render(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
