"""Measure the precision facts behind docs/precision.md with the library's own tools.

Cases (default: all, in this order; see repvgg_lab/studies/drift_probe.py):
  report     the user report: RepVGG-B2g4, kaiming fan_out convs, BN 1/0 vs 0.01/0.01
  fusion     float64 fusion rounded once (ours) vs timm's fp32 fusion, against the fp64 truth
  bf16       the same net converted and evaluated in bfloat16
  tf32       fp32 with TF32 on vs off (CUDA only; on a CPU the case records why it was skipped)
  underflow  init gamma 0.1 / 0.01: exact-zero drift next to the underflow fraction
  rmnet      RMNet's identity BN in fp32 vs the fold-first conversion's reserved channels

    python scripts/drift_probe.py                      # everything, CPU, 1 thread (minutes)
    python scripts/drift_probe.py report fusion --batch 4
    python scripts/drift_probe.py tf32 --device cuda   # on a GPU machine
    python scripts/drift_probe.py --results docs/results/drift_probe.json  # docs/precision.md
    python scripts/drift_probe.py --render             # re-render docs/precision.md's blocks
"""

from __future__ import annotations

import sys

import torch

from repvgg_lab.studies import drift_probe
from repvgg_lab.studies.common import rendered, save_results, setup_logging, study_parser
from repvgg_lab.utils import torch_threads


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, "drift_probe.json")
    cases = list(drift_probe.CASES)
    parser.add_argument("cases", nargs="*", metavar="case", help=f"any of {', '.join(cases)}")
    parser.add_argument("--model", default="repvgg_b2g4", help="fusion/bf16/tf32/underflow net")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fusion seeds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steady on a shared machine)"
    )
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in cases]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(cases)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    setup_logging()
    if args.render:
        record = rendered("drift_probe.json")
    else:
        settings = drift_probe.Settings(
            args.model, args.size, args.batch, args.seed, args.seeds, args.device
        )
        with torch_threads(args.threads):
            results = drift_probe.run(args.cases, settings)
        if args.results:
            save_results(args.results, results, threads=args.threads)
        record = {"results": results}
    for name in record["results"]["cases"]:
        print(f"\n## {name}\n\n{drift_probe.render_case(name)(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
