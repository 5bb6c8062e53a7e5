"""Train-time branches on an ordinary CNN: `small_cnn` trained plain and with each branch set
("repvgg", "acb", "dbb") on the digits data through the real pipeline (`python train.py
model=small_cnn model.model_kwargs.branches=B`, a fresh process per run), converted at the end, and
the deployed nets compared: accuracy, conversion drift, and cost (parameters, MACs, and whether the
deployed state dicts have exactly the plain run's keys and shapes)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors import safe_open

from repvgg_lab.models import add_branches, create_model, reparameterize
from repvgg_lab.models.branched import BRANCH_CHOICES
from repvgg_lab.reparam import rel_max
from repvgg_lab.studies.common import images, render_table, run_job, stats, table
from repvgg_lab.testing import randomize_bn

log = logging.getLogger(__name__)

ACC_KEYS = ("deploy/test/acc", "deploy/val/acc")
DRIFT_KEYS = ("drift/vs_fp64/deploy_rel_max", "drift/vs_fp64/train_rel_max")
COST_KEYS = ("params/train", "params/deploy", "macs/deploy")


@dataclass
class Settings:
    """The study's recipe (the command line's options)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 20
    branches: list[str] = field(default_factory=lambda: list(BRANCH_CHOICES))
    threads: int = 1
    out: str = "outputs/any_cnn"
    modes: list[str] = field(default_factory=lambda: ["offline", "online"])


def variants(s: Settings) -> list[tuple[str, str, str]]:
    """(row name, branch set, mode) of every trained variant: plain first, then each set in
    each mode ("dbb" offline, "dbb_online")."""
    out = [("none", "none", "offline")] if "none" in s.branches else []
    for b in (b for b in s.branches if b != "none"):
        out += [(b if m == "offline" else f"{b}_{m}", b, m) for m in s.modes]
    return out


def deployed_shapes(run_dir: Path) -> dict[str, list[int]]:
    """Key -> shape of the plain net a run exported (`plain.safetensors`)."""
    with safe_open(str(run_dir / "plain.safetensors"), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def one_run(s: Settings, variant: tuple[str, str, str], seed: int) -> dict[str, Any]:
    """One training run's metrics, wall time and deployed shapes."""
    name, branches, mode = variant
    out = Path(s.out) / f"{name}_seed{seed}"
    overrides = [
        f"seed={seed}",
        "logger=none",
        "callbacks.progress_bar=null",
        "model=small_cnn",
        f"model.model_kwargs.branches={branches}",
        f"model.model_kwargs.branch_mode={mode}",
        f"trainer.max_epochs={s.epochs}",
    ]
    start = time.perf_counter()
    metrics = run_job(out, overrides, s.threads)
    keys = (*ACC_KEYS, *DRIFT_KEYS, *COST_KEYS)
    return {
        "metrics": {k: metrics[k] for k in keys},
        "wall_s": round(time.perf_counter() - start, 1),
        "shapes": deployed_shapes(out),
    }


def summarize(s: Settings, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per branch set: accuracy statistics over seeds, the change against plain training in
    points, the worst drift, the costs and whether every deployed net is the plain one."""
    reference = runs["none"][str(s.seeds[0])]["shapes"]
    base = {k: stats([r["metrics"][k] for r in runs["none"].values()])["mean"] for k in ACC_KEYS}
    summary = {}
    for branches, by_seed in runs.items():
        rows = list(by_seed.values())
        entry: dict[str, Any] = {k: stats([r["metrics"][k] for r in rows]) for k in ACC_KEYS}
        for k in ACC_KEYS:
            entry[f"{k} delta_points"] = 100 * (entry[k]["mean"] - base[k])
        entry.update({k: max(r["metrics"][k] for r in rows) for k in DRIFT_KEYS})
        entry.update({k: rows[0]["metrics"][k] for k in COST_KEYS})
        entry["same_deployed_net"] = all(r["shapes"] == reference for r in rows)
        entry["wall_s"] = stats([r["wall_s"] for r in rows])["mean"]
        summary[branches] = entry
    return summary


# Nets for the conversion check: a builder of the user's architecture, and the input size.
CONVERSION_NETS = {
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 64),
    "small_cnn": (lambda: create_model("small_cnn", num_classes=10), 32),
}


def _loads_strictly(fresh: torch.nn.Module, converted: torch.nn.Module) -> bool:
    try:
        fresh.load_state_dict(converted.state_dict(), strict=True)
    except RuntimeError:
        return False
    return True


@torch.no_grad()
def conversion(s: Settings) -> list[dict[str, Any]]:
    """Per net and branch set, the worst over seeds of: the branched net's own fp32 error and the
    converted net's, both against the branched net in float64 (trained-like BN statistics in
    every branch), and whether the converted state dict loads strictly into a fresh copy."""
    rows = []
    for net_name, (make, size) in CONVERSION_NETS.items():
        for name, branches, mode in (v for v in variants(s) if v[0] != "none"):
            own, plain, strict = 0.0, 0.0, True
            for seed in s.seeds:
                torch.manual_seed(seed)
                branched = add_branches(make(), branches, mode=mode, init_scales="orepa")
                branched = randomize_bn(branched, seed=seed).eval()
                x = images(4, size, seed=seed)
                truth = branched.double()(x.double())
                own = max(own, rel_max(truth, branched.float()(x)))
                converted = reparameterize(branched)
                fresh = make().eval()
                strict &= _loads_strictly(fresh, converted)
                plain = max(plain, rel_max(truth, fresh(x)))
            rows.append(
                {
                    "net": net_name,
                    "branches": name,
                    "own": own,
                    "plain": plain,
                    "strict": strict,
                }
            )
    return rows


def run(s: Settings) -> dict[str, Any]:
    """Every (branch set, seed) run, then the summary."""
    if "none" not in s.branches:
        raise ValueError("the study compares against plain training: include 'none'")
    Path(s.out).mkdir(parents=True, exist_ok=True)
    runs = {v[0]: {str(seed): one_run(s, v, seed) for seed in s.seeds} for v in variants(s)}
    summary = summarize(s, runs)
    for by_seed in runs.values():  # the summary keeps the comparison; the file stays small
        for r in by_seed.values():
            r.pop("shapes")
    checks = conversion(s)
    return {"settings": vars(s), "runs": runs, "summary": summary, "conversion": checks}


def _mean_std(entry: dict[str, Any]) -> str:
    return f"{entry['mean']:.4f} ± {entry['std']:.4f}"


def render(record: dict[str, Any]) -> str:
    """docs/any_cnn.md's table, from docs/results/any_cnn.json."""
    r = record["results"]
    columns = [
        ("branches", "s"),
        ("deploy test acc (mean ± std)", "s"),
        ("Δ test (points)", "f2"),
        ("deploy val acc (mean ± std)", "s"),
        ("Δ val (points)", "f2"),
        ("worst drift vs fp64", "e1"),
        ("params, train form", "s"),
        ("params, deployed", "s"),
        ("MACs, deployed", "s"),
        ("deployed net = plain run's", "s"),
        ("train.py wall per run (s)", "f1"),
        ("× plain", "x"),
    ]
    rows = []
    settings = r["settings"]
    modes = settings.get("modes", ["offline"])  # results from before online branches
    for branches, _, _ in variants(Settings(branches=settings["branches"], modes=modes)):
        e = r["summary"][branches]
        rows.append(
            [
                branches,
                _mean_std(e["deploy/test/acc"]),
                e["deploy/test/acc delta_points"],
                _mean_std(e["deploy/val/acc"]),
                e["deploy/val/acc delta_points"],
                e["drift/vs_fp64/deploy_rel_max"],
                f"{e['params/train']:,}",
                f"{e['params/deploy']:,}",
                f"{e['macs/deploy']:,}",
                "yes" if e["same_deployed_net"] else "**no**",
                e["wall_s"],
                e["wall_s"] / r["summary"]["none"]["wall_s"],
            ]
        )
    s = r["settings"]
    note = (
        f"\n\n{len(s['seeds'])} seeds, {s['epochs']} epochs each, {s['threads']} CPU thread(s) per "
        "run, one run at a time (wall time includes start-up, conversion and evaluation); "
        f"measured with "
        f"`{record['command']}` on {record['date'][:10]} ({record['machine']['cpu']})."
    )
    return "\n".join(render_table(table(columns, rows))) + note


def render_conversion(record: dict[str, Any]) -> str:
    """docs/any_cnn.md's conversion table, from docs/results/any_cnn.json."""
    columns = [
        ("net", "s"),
        ("branches", "s"),
        ("branched net, fp32 vs fp64", "e1"),
        ("converted net, fp32 vs fp64", "e1"),
        ("ratio", "f2"),
        ("loads strictly into the original", "s"),
    ]
    rows = [
        [c["net"], c["branches"], c["own"], c["plain"], c["plain"] / c["own"], c["strict"]]
        for c in record["results"]["conversion"]
    ]
    rows = [[*r[:5], "yes" if r[5] else "**no**"] for r in rows]
    return "\n".join(render_table(table(columns, rows)))
