"""Conversion speed: repvgg_lab.reparameterize vs timm's reparameterize_model on the same net.

Both convert a copy (inplace=False) of one multi-branch net with trained-like BN statistics, fp32
on CPU. After warm-up, each round times one call of each, in alternating order so a load change
on a shared machine hits both alike; the table gives medians and the median per-round ratio.

    python scripts/bench_convert.py                       # repvgg_b3, 7 rounds
    python scripts/bench_convert.py --models repvgg_a0 repvgg_b2g4 --rounds 9 --out convert.json

`bench_conversion(name, rounds)` is the reusable measurement (returns metric-name -> value).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from timm.utils.model import reparameterize_model
from torch import nn

from repvgg_lab.models import create_model, reparameterize
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn

log = logging.getLogger("bench_convert")


def _require_in_timm(name: str) -> None:
    if name not in timm.list_models("repvgg*"):
        known = ", ".join(timm.list_models("repvgg*"))
        raise ValueError(f"timm has no {name!r} to compare with; choose from {known}")


def _nets(name: str) -> tuple[nn.Module, nn.Module]:
    """Our multi-branch net and timm's, holding the same weights, in eval mode."""
    _require_in_timm(name)
    ours = randomize_bn(create_model(name), seed=0).eval()
    theirs = timm.create_model(name).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _timed(convert: Callable[[], nn.Module]) -> tuple[float, float, nn.Module]:
    """(wall seconds, process CPU seconds, result) of one call."""
    gc.collect()  # the previous round's copies must not be freed inside the timed call
    wall, cpu = time.perf_counter(), time.process_time()
    result = convert()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _kernel_gap(ours: nn.Module, theirs: nn.Module) -> float:
    """Largest relative difference between the two converters' fused kernels and biases."""
    theirs_state = theirs.state_dict()
    return max(rel_max(theirs_state[k], v) for k, v in ours.state_dict().items())


def bench_conversion(
    name: str, rounds: int = 7, warmup: int = 1, on_round: Callable[[], None] | None = None
) -> dict[str, float]:
    """Median conversion time of ours and timm's (seconds), and the median per-round ratio."""
    ours_net, timm_net = _nets(name)
    converters = {
        "ours": lambda: reparameterize(ours_net, inplace=False),
        "timm": lambda: reparameterize_model(timm_net, inplace=False),
    }
    times: dict[str, list[float]] = {"ours": [], "timm": []}
    cpu: dict[str, list[float]] = {"ours": [], "timm": []}
    gap = float("nan")
    with torch.no_grad():
        for i in range(warmup + rounds):
            order = ("ours", "timm") if i % 2 == 0 else ("timm", "ours")
            results = {}
            for kind in order:
                seconds, cpu_seconds, results[kind] = _timed(converters[kind])
                if i >= warmup:
                    times[kind].append(seconds)
                    cpu[kind].append(cpu_seconds)
            if i == 0:  # we time real, equivalent conversions
                gap = _kernel_gap(results["ours"], results["timm"])
            del results
            if on_round is not None:
                on_round()
    ratios = [o / t for o, t in zip(times["ours"], times["timm"], strict=True)]
    prefix = f"convert/{name}"
    return {
        f"{prefix}/ours_s": statistics.median(times["ours"]),
        f"{prefix}/timm_s": statistics.median(times["timm"]),
        f"{prefix}/ratio_vs_timm": statistics.median(ratios),
        f"{prefix}/ours_min_s": min(times["ours"]),
        f"{prefix}/timm_min_s": min(times["timm"]),
        # CPU seconds (all threads): steadier than wall time when other jobs share the cores.
        f"{prefix}/ours_cpu_s": statistics.median(cpu["ours"]),
        f"{prefix}/timm_cpu_s": statistics.median(cpu["timm"]),
        f"{prefix}/kernel_rel_diff": gap,
    }


def _table(results: dict[str, float], names: list[str], rounds: int) -> Table:
    table = Table(
        title=f"Conversion time, fp32 CPU, {torch.get_num_threads()} threads, "
        f"median of {rounds} interleaved rounds"
    )
    columns = (
        "model",
        "ours s",
        "timm s",
        "ours/timm",
        "min ours/timm s",
        "cpu ours/timm s",
        "gap",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in names:
        r = {k.rsplit("/", 1)[1]: v for k, v in results.items() if k.startswith(f"convert/{name}/")}
        table.add_row(
            name,
            f"{r['ours_s']:.3f}",
            f"{r['timm_s']:.3f}",
            f"{r['ratio_vs_timm']:.2f}x",
            f"{r['ours_min_s']:.3f} / {r['timm_min_s']:.3f}",
            f"{r['ours_cpu_s']:.3f} / {r['timm_cpu_s']:.3f}",
            f"{r['kernel_rel_diff']:.1e}",
        )
    table.caption = "gap: largest relative difference between the two converters' fused kernels"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["repvgg_b3"], help="RepVGG names timm has too"
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    args = parser.parse_args()
    try:
        for name in args.models:
            _require_in_timm(name)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    results: dict[str, float] = {}
    with Progress(transient=True) as progress:
        for name in args.models:
            task = progress.add_task(f"{name}: converting", total=args.warmup + args.rounds)

            def step(task: int = task) -> None:
                progress.advance(task)

            results.update(bench_conversion(name, args.rounds, args.warmup, on_round=step))
    Console().print(_table(results, args.models, args.rounds))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "timm": timm.__version__, "threads": args.threads}
        args.out.write_text(json.dumps({**results, "meta": meta}, indent=2) + "\n")
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
