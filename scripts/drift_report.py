"""Turn a gamma-drift sweep (`python train.py -m sweep=gamma_drift`) into a table and plots.

    python scripts/drift_report.py outputs/gamma_drift/<time>
    python scripts/drift_report.py SWEEP_DIR --results docs/results/gamma_sweep.json
    python scripts/drift_report.py --render       # re-render docs/precision.md's sweep block

Every run folder under SWEEP_DIR that holds a `metrics.json` becomes one row of
`SWEEP_DIR/drift_table.csv` (settings, underflow and zero-drift flags, every `drift/*` metric,
per-block summaries; see repvgg_lab/studies/gamma_sweep.py). Plots, also in SWEEP_DIR:
`drift_vs_gamma.png` (drift against float64 vs init gamma, underflowed points ringed, exact zeros
as down-triangles) and `drift_blocks.png` (per-block drift, one line per gamma).

A summary is printed to stdout; rows with underflow get a warning, because their end-to-end
drift is an artefact of values fp32 cannot hold, not a property of the conversion.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from repvgg_lab.pipeline.tracking import publish_study
from repvgg_lab.studies import gamma_sweep
from repvgg_lab.studies.common import rendered, save_results, setup_logging, study_parser
from repvgg_lab.studies.gamma_plots import save_plots

UNDERFLOW = (
    "warning: {run}: activations underflow in {underflow}: that end-to-end drift is an artefact "
    "(values the dtype cannot hold); read the per-block columns"
)
ZERO = (
    "note: {run}: end-to-end drift is exactly 0 in {zero_drift}: the output no longer depends on "
    "the input's path through the net (logits = bias), not a sign of exactness; read the "
    "per-block columns"
)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, "gamma_sweep.json")
    parser.add_argument(
        "sweep_dir", type=Path, nargs="?", help="the multirun folder (hydra.sweep.dir)"
    )
    parser.add_argument(
        "--no-wandb", action="store_true", help="no offline W&B run with the plots and table"
    )
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    if args.render:
        print(gamma_sweep.render_summary(rendered("gamma_sweep.json")))
        return 0
    if args.sweep_dir is None:
        parser.error("give the sweep folder (or --render)")
    try:
        rows, blocks = gamma_sweep.collect_runs(args.sweep_dir)
    except gamma_sweep.ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gamma_sweep.write_table(rows, args.sweep_dir / gamma_sweep.TABLE)
    plots = save_plots(rows, blocks, args.sweep_dir)
    if args.results:
        save_results(args.results, gamma_sweep.results(args.sweep_dir, rows))
    if not args.no_wandb:
        table = args.sweep_dir / gamma_sweep.TABLE
        print(f"W&B run: {publish_study(args.sweep_dir, 'gamma_sweep', plots, [table])}")
    print(gamma_sweep.summary(rows))
    for row in rows:
        for flag, text in (("underflow", UNDERFLOW), ("zero_drift", ZERO)):
            if row[flag]:
                print(text.format(**row), file=sys.stderr)
    for path in (args.sweep_dir / gamma_sweep.TABLE, *plots):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
