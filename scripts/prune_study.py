"""Accuracy, MACs, parameters and CPU latency of RepVGG-A0 pruned after sparsity training on the
digits data, for several MAC-reduction targets, through the real training pipeline.

    PYTHONPATH=. python scripts/prune_study.py              # the study in docs/pruning.md
    PYTHONPATH=. python scripts/prune_study.py --quick      # a smoke-sized variant (minutes)

Per seed: (1) a baseline repvgg_a0 without gates trained for epochs + finetune epochs (the
reference accuracy); (2) a gated repvgg_a0 trained `epochs` with the L1 gate penalty and no
pruning; (3) for each target, `train.py prune=gates prune.macs_reduction=T` resumed from run (2)'s
last checkpoint, which skips training and runs the pipeline's conversion, pruning (accuracy before
fine-tuning), fine-tuning and `metrics.json` (the script checks that it converted the net of run
(2)). Target 0 means threshold 0: exact pruning, which removes only channels whose gate reached
exactly 0, so it is the unpruned net fine-tuned alike.
Latency: batch 1, the unpruned and every pruned net of the first seed timed in interleaved rounds
(repvgg_lab.deploy.latency) at the training size and at 224x224, on `--threads` CPU threads.
Writes results.json and table.md to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from repvgg_lab.deploy import load_source
from repvgg_lab.pipeline.train import train
from repvgg_lab.utils import count_macs, count_params, measure_latency, paired_ratio

log = logging.getLogger("prune_study")
ROOT = Path(__file__).resolve().parents[1]
ACC_KEYS = ("prune/test/acc", "finetune/test/acc", "prune/val/acc", "finetune/val/acc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 3+1 epochs, targets 0 and 0.3")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20, help="sparsity-training epochs")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument(
        "--distill", type=float, default=0.5, help="finetune.distill: weight of distillation"
    )
    p.add_argument("--finetune-lr", type=float, default=0.01, help="per 256 images (SGD)")
    p.add_argument("--sparsity", type=float, default=1e-3, help="lambda of the L1 gate penalty")
    p.add_argument("--targets", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    p.add_argument("--score", default="l2_next", choices=["l2", "l2_next"])
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=16,
        help="training batches that recalibrate the pruned net (0: none)",
    )
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--latency-sizes", type=int, nargs="*", default=None, help="[img-size, 224]")
    p.add_argument("--latency-rounds", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (all steps)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "prune_study")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild table.md from --out/results.json"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.finetune_epochs = args.seeds[:1], 3, 1
        args.targets, args.latency_rounds = [0.0, 0.3], 5
    if args.latency_sizes is None:
        args.latency_sizes = [args.img_size, 224]
    if any(not 0.0 <= t < 1.0 for t in args.targets):
        p.error(f"--targets must lie in [0, 1), got {args.targets}")
    return args


def run_job(out: Path, overrides: list[str]) -> dict[str, float]:
    """One in-process `python train.py OVERRIDES` job writing to `out`; its final metrics."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", overrides=[f"output_dir={out}", *overrides])
    start = time.perf_counter()
    metrics = train(cfg)
    log.info("%s: %.0f s", out, time.perf_counter() - start)
    return metrics


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Baseline, sparse training, and every pruning target for one seed."""
    folder = args.out / f"seed{seed}"
    common = [
        f"seed={seed}",
        "logger=none",
        "callbacks.progress_bar=null",
        f"data.img_size={args.img_size}",
    ]
    epochs, ft = args.epochs, args.finetune_epochs
    baseline = run_job(folder / "baseline", [*common, f"trainer.max_epochs={epochs + ft}"])
    gates = [
        *common,
        "prune=gates",
        f"prune.sparsity={args.sparsity}",
        f"trainer.max_epochs={epochs}",
        "prune.macs_reduction=null",
    ]
    # last.ckpt holds the final epoch's weights: the resumed runs below start from them.
    sparse = run_job(folder / "sparse", [*gates, "prune.enabled=false", "finetune.epochs=0"])
    last = folder / "sparse" / "checkpoints" / "last.ckpt"
    pruned: dict[str, dict[str, float]] = {}
    for target in args.targets:
        criterion = f"prune.macs_reduction={target}" if target > 0 else "prune.threshold=0"
        pruned[str(target)] = run_job(
            folder / f"prune{target:g}",
            [
                *gates,
                criterion,
                f"prune.score={args.score}",
                f"prune.calibration_batches={args.calibration_batches}",
                f"finetune.epochs={ft}",
                f"finetune.lr={args.finetune_lr}",
                f"finetune.distill={args.distill}",
                "prune.latency_rounds=3",
                f"ckpt_path={last}",
            ],
        )
        resumed = pruned[str(target)]["deploy/test/acc"]
        if resumed != sparse["deploy/test/acc"]:
            raise RuntimeError(
                f"the resumed run converted another net than the sparse run (test acc {resumed} "
                f"vs {sparse['deploy/test/acc']}): {last} does not hold the final weights"
            )
    return {"baseline": baseline, "sparse": sparse, "pruned": pruned}


def latency(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Batch-1 latency of the unpruned and every pruned net of `seed`, interleaved per size."""
    folder = args.out / f"seed{seed}"
    nets = {"unpruned": load_source(folder / "sparse" / "plain.safetensors").plain}
    for target in args.targets:
        nets[str(target)] = load_source(folder / f"prune{target:g}" / "pruned.safetensors").plain
    result: dict[str, Any] = {}
    for size in args.latency_sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        fns = {name: partial(net.eval(), x) for name, net in nets.items()}
        with torch.inference_mode():
            times = measure_latency(fns, rounds=args.latency_rounds, warmup=2)
        result[str(size)] = {
            name: {
                "median_ms": times[name]["median_ms"],
                "speedup": paired_ratio(times, "unpruned", name),
                "macs": count_macs(nets[name], size, 3),
                "times_ms": times[name]["times_ms"],
            }
            for name in nets
        }
        log.info("latency @%d: %s", size, {k: round(v["median_ms"], 2) for k, v in times.items()})
    result["params"] = {name: count_params(net) for name, net in nets.items()}
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summarize(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-target accuracy statistics over seeds, costs, and the acceptance check."""
    seeds = list(runs)
    summary: dict[str, Any] = {"targets": {}}
    for split in ("test", "val"):
        for run in ("baseline", "sparse"):
            values = [runs[s][run][f"deploy/{split}/acc"] for s in seeds]
            summary[f"{run}_{split}_acc"] = _stats(values)
    for target in map(str, args.targets):
        rows = [runs[s]["pruned"][target] for s in seeds]
        entry = {key: _stats([r[key] for r in rows]) for key in ACC_KEYS}
        entry["macs_before"] = rows[0]["prune/macs_before"]
        entry["macs_after"] = _stats([r["prune/macs_after"] for r in rows])
        entry["params_after"] = _stats([r["prune/params_after"] for r in rows])
        entry["macs_reduction"] = _stats(
            [1 - r["prune/macs_after"] / r["prune/macs_before"] for r in rows]
        )
        for split in ("test", "val"):
            entry[f"{split}_delta_points"] = 100 * (
                entry[f"finetune/{split}/acc"]["mean"] - summary[f"baseline_{split}_acc"]["mean"]
            )
        summary["targets"][target] = entry
    qualifying = [t for t in args.targets if t >= 0.3]
    if qualifying:
        t = str(min(qualifying))
        e = summary["targets"][t]
        summary["acceptance"] = {
            "target": float(t),
            "macs_reduction": e["macs_reduction"]["mean"],
            "test_loss_points": -e["test_delta_points"],
            "val_loss_points": -e["val_delta_points"],
            "test_loss_vs_unpruned_gated_points": 100
            * (summary["sparse_test_acc"]["mean"] - e["finetune/test/acc"]["mean"]),
            "passed_on_test": -e["test_delta_points"] <= 0.5,
        }
    return summary


def _pct(stats: dict[str, float]) -> str:
    text = f"{100 * stats['mean']:.2f}"
    return text + (f" ± {100 * stats['std']:.2f}" if len(stats["values"]) > 1 else "")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _name(args: argparse.Namespace, target: str) -> str:
    if float(target) == 0:
        return f"threshold 0 (exact) + {args.finetune_epochs} ep FT"
    return f"MACs −{float(target):.0%} + {args.finetune_epochs} ep FT"


def accuracy_table(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """Accuracy before and after fine-tuning, test and validation, against the baseline."""
    head = ["model", "MAC cut", "test acc before FT", "test acc", "Δ test", "val acc", "Δ val"]
    base_t, base_v = summary["baseline_test_acc"], summary["baseline_val_acc"]
    epochs = args.epochs + args.finetune_epochs
    lines = [_row(head), "|" + "---|" * len(head)]
    lines.append(
        _row([f"baseline: no gates, {epochs} epochs", "—", "—", _pct(base_t), 0, _pct(base_v), 0])
    )
    sparse_t, sparse_v = summary["sparse_test_acc"], summary["sparse_val_acc"]
    lines.append(
        _row(
            [
                f"gated, λ={args.sparsity:g}, {args.epochs} epochs, unpruned",
                "0 %",
                "—",
                _pct(sparse_t),
                f"{100 * (sparse_t['mean'] - base_t['mean']):+.2f}",
                _pct(sparse_v),
                f"{100 * (sparse_v['mean'] - base_v['mean']):+.2f}",
            ]
        )
    )
    for target, e in summary["targets"].items():
        lines.append(
            _row(
                [
                    _name(args, target),
                    f"{100 * e['macs_reduction']['mean']:.1f} %",
                    _pct(e["prune/test/acc"]),
                    _pct(e["finetune/test/acc"]),
                    f"{e['test_delta_points']:+.2f}",
                    _pct(e["finetune/val/acc"]),
                    f"{e['val_delta_points']:+.2f}",
                ]
            )
        )
    return "\n".join(lines) + "\n"


def cost_table(args: argparse.Namespace, lat: dict[str, Any]) -> str:
    """MACs, parameters and batch-1 latency of the first seed's nets."""
    sizes = [str(s) for s in args.latency_sizes]
    head = [
        "model",
        *[f"MACs @{s}" for s in sizes],
        "params",
        *[f"latency @{s} (ms)" for s in sizes],
        *[f"speedup @{s}" for s in sizes],
    ]
    lines = [_row(head), "|" + "---|" * len(head)]
    for name in ["unpruned", *map(str, args.targets)]:
        label = name if name == "unpruned" else _name(args, name).rsplit(" + ", 1)[0]
        lines.append(
            _row(
                [
                    label,
                    *[f"{lat[s][name]['macs'] / 1e6:.1f} M" for s in sizes],
                    f"{lat['params'][name] / 1e6:.2f} M",
                    *[f"{lat[s][name]['median_ms']:.2f}" for s in sizes],
                    *[f"{lat[s][name]['speedup']:.2f}" for s in sizes],
                ]
            )
        )
    return "\n".join(lines) + "\n"


def render(args: argparse.Namespace, results: dict[str, Any]) -> str:
    """table.md: both tables and the notes that say how to read them."""
    summary, lat = results["summary"], results["latency"]
    images = _test_images(args.img_size)
    seeds = ", ".join(map(str, args.seeds))
    notes = (
        f"{len(args.seeds)} seed(s) ({seeds}); accuracy in % over {images} test and {images} "
        f"validation images (one image = {100 / images:.2f} points), mean ± std over seeds; "
        f"Δ in points against the baseline. Latency: batch 1, seed {args.seeds[0]}'s nets, "
        f"median of {args.latency_rounds} interleaved rounds on {results['threads']} thread(s); "
        f"speedup = median per-round ratio unpruned / pruned. Run time "
        f"{results['elapsed_s'] / 60:.1f} min.\n"
    )
    if "acceptance" in summary:
        a = summary["acceptance"]
        notes += (
            f"Acceptance (≥ 30 % of the MACs removed, ≤ 0.5 points lost): MACs "
            f"−{100 * a['macs_reduction']:.1f} %, test {-a['test_loss_points']:+.2f} points "
            f"({'passed' if a['passed_on_test'] else 'NOT passed'}), validation "
            f"{-a['val_loss_points']:+.2f} points; against the unpruned gated net "
            f"{-a['test_loss_vs_unpruned_gated_points']:+.2f} test points.\n"
        )
    return accuracy_table(args, summary) + "\n" + cost_table(args, lat) + "\n" + notes


def _test_images(img_size: int) -> int:
    from repvgg_lab.data import DigitsDataModule

    dm = DigitsDataModule(img_size=img_size)
    dm.setup()
    return len(dm.test_dataloader().dataset)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    path = args.out / "results.json"
    if args.report_only:
        results = json.loads(path.read_text())
        settings = {**results["settings"], "out": args.out, "report_only": True}
        args = argparse.Namespace(**settings)
    else:
        torch.set_num_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        runs = {str(seed): one_seed(args, seed) for seed in args.seeds}
        lat = latency(args, args.seeds[0])
        command = "PYTHONPATH=. python scripts/prune_study.py " + " ".join(sys.argv[1:])
        results = {
            "command": command.strip(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "elapsed_s": time.perf_counter() - start,
            "load_average": list(os.getloadavg()),
            "latency": lat,
            "runs": runs,
        }
    results["summary"] = summarize(args, results["runs"])
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    text = render(args, results)
    (args.out / "table.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
