"""Accuracy, MACs, parameters and CPU latency of RepVGG-A0 pruned after sparsity training on the
digits data, for several MAC-reduction targets, through the real training pipeline.

Per seed: (1) a baseline repvgg_a0 without gates trained for epochs + finetune epochs (the
reference accuracy); (2) a gated repvgg_a0 trained `epochs` with the L1 gate penalty and no
pruning; (3) for each target, `train.py prune=gates prune.macs_reduction=T` resumed from run (2)'s
last checkpoint, which skips training and runs the pipeline's conversion, pruning, fine-tuning and
`metrics.json`. Target 0 means threshold 0 (exact pruning). Every job is `python train.py` in a
fresh process. Latency: batch 1, the unpruned and every pruned net of the first seed timed in
interleaved rounds. Acceptance: at the smallest target >= 30 %, at most 0.5 points lost against
the baseline on test *and* validation."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from repvgg_lab.deploy import load_source
from repvgg_lab.studies.common import render_table, run_job, stats, table
from repvgg_lab.utils import count_macs, count_params, measure_latency, paired_ratio

log = logging.getLogger(__name__)

ACC_KEYS = ("prune/test/acc", "finetune/test/acc", "prune/val/acc", "finetune/val/acc")
MAX_LOSS_POINTS = 0.5


@dataclass
class Settings:
    """The study's recipe (the command line's options)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 20
    finetune_epochs: int = 10
    distill: float = 0.5
    finetune_lr: float = 0.01
    sparsity: float = 1e-3
    targets: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7])
    score: str = "l2_next"
    calibration_batches: int = 16
    img_size: int = 32
    latency_sizes: list[int] = field(default_factory=lambda: [32, 224])
    latency_rounds: int = 25
    threads: int = 1
    out: str = "outputs/prune_study"


def _prune_overrides(s: Settings, target: float, last: Path) -> list[str]:
    """The pipeline options of one pruning target, resumed from the gated run's checkpoint."""
    criterion = f"prune.macs_reduction={target}" if target > 0 else "prune.threshold=0"
    return [
        criterion,
        f"prune.score={s.score}",
        f"prune.calibration_batches={s.calibration_batches}",
        f"finetune.epochs={s.finetune_epochs}",
        f"finetune.lr={s.finetune_lr}",
        f"finetune.distill={s.distill}",
        "prune.latency_rounds=3",
        f"ckpt_path={last}",
    ]


def one_seed(s: Settings, seed: int) -> dict[str, Any]:
    """Baseline, sparse training, and every pruning target for one seed."""
    folder, job = Path(s.out) / f"seed{seed}", partial(run_job, threads=s.threads)
    common = [f"seed={seed}", "logger=none", "callbacks.progress_bar=null"]
    common.append(f"data.img_size={s.img_size}")
    baseline = job(
        folder / "baseline", [*common, f"trainer.max_epochs={s.epochs + s.finetune_epochs}"]
    )
    gates = [*common, "prune=gates", f"prune.sparsity={s.sparsity}"]
    gates += [f"trainer.max_epochs={s.epochs}", "prune.macs_reduction=null"]
    # last.ckpt holds the final epoch's weights: the resumed runs below start from them.
    sparse = job(folder / "sparse", [*gates, "prune.enabled=false", "finetune.epochs=0"])
    last = folder / "sparse" / "checkpoints" / "last.ckpt"
    pruned: dict[str, dict[str, float]] = {}
    for target in s.targets:
        metrics = job(folder / f"prune{target:g}", [*gates, *_prune_overrides(s, target, last)])
        if metrics["deploy/test/acc"] != sparse["deploy/test/acc"]:
            raise RuntimeError(
                f"the resumed run converted another net than the sparse run (test acc "
                f"{metrics['deploy/test/acc']} vs {sparse['deploy/test/acc']}): {last} does not "
                "hold the final weights"
            )
        pruned[str(target)] = metrics
    return {"baseline": baseline, "sparse": sparse, "pruned": pruned}


def latency(s: Settings, seed: int) -> dict[str, Any]:
    """Batch-1 latency of the unpruned and every pruned net of `seed`, interleaved per size."""
    folder = Path(s.out) / f"seed{seed}"
    nets = {"unpruned": load_source(folder / "sparse" / "plain.safetensors").plain.eval()}
    for target in s.targets:
        path = folder / f"prune{target:g}" / "pruned.safetensors"
        nets[str(target)] = load_source(path).plain.eval()
    result: dict[str, Any] = {"params": {name: count_params(net) for name, net in nets.items()}}
    for size in s.latency_sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            times = measure_latency(
                {k: partial(n, x) for k, n in nets.items()}, s.latency_rounds, 2
            )
        result[str(size)] = {
            name: {
                "median_ms": times[name]["median_ms"],
                "speedup": paired_ratio(times, "unpruned", name),
                "macs": count_macs(nets[name], size, 3),
                "times_ms": times[name]["times_ms"],
            }
            for name in nets
        }
    return result


def _target_entry(rows: list[dict[str, float]], summary: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {key: stats([r[key] for r in rows]) for key in ACC_KEYS}
    entry["macs_before"] = rows[0]["prune/macs_before"]
    entry["macs_after"] = stats([r["prune/macs_after"] for r in rows])
    entry["params_after"] = stats([r["prune/params_after"] for r in rows])
    cuts = [1 - r["prune/macs_after"] / r["prune/macs_before"] for r in rows]
    entry["macs_reduction"] = stats(cuts)
    for split in ("test", "val"):
        base = summary[f"baseline_{split}_acc"]["mean"]
        entry[f"{split}_delta_points"] = 100 * (entry[f"finetune/{split}/acc"]["mean"] - base)
    return entry


def acceptance(summary: dict[str, Any], targets: list[float]) -> dict[str, Any] | None:
    """The acceptance check at the smallest target >= 0.3: met only if both splits lose at most
    MAX_LOSS_POINTS against the baseline."""
    qualifying = [t for t in targets if t >= 0.3]
    if not qualifying:
        return None
    t = str(min(qualifying))
    e = summary["targets"][t]
    test_loss, val_loss = -e["test_delta_points"], -e["val_delta_points"]
    gated = 100 * (summary["sparse_test_acc"]["mean"] - e["finetune/test/acc"]["mean"])
    return {
        "target": float(t),
        "macs_reduction": e["macs_reduction"]["mean"],
        "test_loss_points": test_loss,
        "val_loss_points": val_loss,
        "test_loss_vs_unpruned_gated_points": gated,
        "met_on_test": test_loss <= MAX_LOSS_POINTS,
        "met_on_val": val_loss <= MAX_LOSS_POINTS,
        "met": test_loss <= MAX_LOSS_POINTS and val_loss <= MAX_LOSS_POINTS,
    }


def summarize(targets: list[float], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-target accuracy statistics over seeds, costs, and the acceptance check."""
    summary: dict[str, Any] = {"targets": {}}
    for split in ("test", "val"):
        for run in ("baseline", "sparse"):
            values = [r[run][f"deploy/{split}/acc"] for r in runs.values()]
            summary[f"{run}_{split}_acc"] = stats(values)
    for target in map(str, targets):
        rows = [r["pruned"][target] for r in runs.values()]
        summary["targets"][target] = _target_entry(rows, summary)
    summary["acceptance"] = acceptance(summary, targets)
    return summary


def run(s: Settings) -> dict[str, Any]:
    """The whole study: every seed's jobs, the first seed's latency, the summary."""
    Path(s.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = {str(seed): one_seed(s, seed) for seed in s.seeds}
    lat = latency(s, s.seeds[0])
    return {
        "settings": vars(s).copy(),
        "elapsed_s": time.perf_counter() - start,
        "load_average": list(os.getloadavg()),
        "test_images": _test_images(s.img_size),
        "latency": lat,
        "runs": runs,
        "summary": summarize(s.targets, runs),
    }


def _test_images(img_size: int) -> int:
    from repvgg_lab.data import DigitsDataModule

    dm = DigitsDataModule(img_size=img_size)
    dm.setup()
    return len(dm.test_dataloader().dataset)


# --- doc blocks --------------------------------------------------------------------------------


def _pct(stats: dict[str, Any]) -> str:
    text = f"{100 * stats['mean']:.2f}"
    return text + (f" ± {100 * stats['std']:.2f}" if len(stats["values"]) > 1 else "")


def _name(s: dict[str, Any], target: str) -> str:
    if float(target) == 0:
        return f"threshold 0 (exact) + {s['finetune_epochs']} ep FT"
    return f"MACs −{float(target):.0%} + {s['finetune_epochs']} ep FT"


def _delta(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{100 * (a['mean'] - b['mean']):+.2f}"


def render_accuracy(record: dict[str, Any]) -> str:
    """Doc block: accuracy before and after fine-tuning, test and validation, vs the baseline."""
    res = record["results"]
    s, summary = res["settings"], res["summary"]
    base_t, base_v = summary["baseline_test_acc"], summary["baseline_val_acc"]
    sparse_t, sparse_v = summary["sparse_test_acc"], summary["sparse_val_acc"]
    rows = [
        [f"baseline: no gates, {s['epochs'] + s['finetune_epochs']} epochs", "—", "—"]
        + [_pct(base_t), "0", _pct(base_v), "0"],
        [f"gated, λ={s['sparsity']:g}, {s['epochs']} epochs, unpruned", "0 %", "—", _pct(sparse_t)]
        + [_delta(sparse_t, base_t), _pct(sparse_v), _delta(sparse_v, base_v)],
    ]
    for target, e in summary["targets"].items():
        rows.append(
            [_name(s, target), f"{100 * e['macs_reduction']['mean']:.1f} %"]
            + [_pct(e["prune/test/acc"]), _pct(e["finetune/test/acc"])]
            + [f"{e['test_delta_points']:+.2f}", _pct(e["finetune/val/acc"])]
            + [f"{e['val_delta_points']:+.2f}"]
        )
    head = ["model", "MAC cut", "test acc before FT", "test acc", "Δ test", "val acc", "Δ val"]
    images = res["test_images"]
    seeds = ", ".join(map(str, s["seeds"]))
    note = (
        f"{len(s['seeds'])} seed(s) ({seeds}); accuracy in % over {images} test and {images} "
        f"validation images (one image = {100 / images:.2f} points), mean ± std over seeds; "
        f"Δ in points against the baseline. Run time {res['elapsed_s'] / 60:.1f} min, "
        f"{record['date']}."
    )
    return "\n".join([note, "", *render_table(table([(h, "s") for h in head], rows))])


def render_cost(record: dict[str, Any]) -> str:
    """Doc block: MACs, parameters and batch-1 latency of the first seed's nets."""
    res = record["results"]
    s, lat = res["settings"], res["latency"]
    sizes = [str(size) for size in s["latency_sizes"]]
    rows = []
    for name in ["unpruned", *map(str, s["targets"])]:
        label = name if name == "unpruned" else _name(s, name).rsplit(" + ", 1)[0]
        rows.append(
            [label, *[lat[z][name]["macs"] / 1e6 for z in sizes], lat["params"][name] / 1e6]
            + [lat[z][name]["median_ms"] for z in sizes]
            + [lat[z][name]["speedup"] for z in sizes]
        )
    columns = [("model", "s"), *[(f"MACs @{z} (M)", "f1") for z in sizes], ("params (M)", "f2")]
    columns += [(f"latency @{z} (ms)", "f2") for z in sizes]
    columns += [(f"speedup @{z}", "f2") for z in sizes]
    note = (
        f"Seed {s['seeds'][0]}'s nets; batch 1, median of {s['latency_rounds']} interleaved rounds "
        f"on {s['threads']} thread(s); speedup = median per-round ratio unpruned / pruned."
    )
    return "\n".join([note, "", *render_table(table(columns, rows))])


def render_acceptance(record: dict[str, Any]) -> str:
    """Doc block: the acceptance check, MET or MISSED, with each split's loss."""
    a = record["results"]["summary"].get("acceptance")
    if a is None:
        return "Acceptance not checked: no target of at least 30 % in this run."

    def verdict(ok: bool) -> str:
        """One split's verdict."""
        return "met" if ok else "MISSED"

    return (
        f"**Acceptance (≥ 30 % of the MACs removed, ≤ {MAX_LOSS_POINTS} points lost against the "
        f"baseline): {'MET' if a['met'] else 'MISSED'}.** At MACs −{100 * a['macs_reduction']:.1f} "
        f"% after fine-tuning: test {-a['test_loss_points']:+.2f} points "
        f"({verdict(a['met_on_test'])}), validation {-a['val_loss_points']:+.2f} points "
        f"({verdict(a['met_on_val'])}); against the unpruned gated net it came from "
        f"{-a['test_loss_vs_unpruned_gated_points']:+.2f} test points."
    )
