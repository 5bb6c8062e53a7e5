"""The last words of a run: what the nets scored, how far the plain net is from the float64
truth (in scientific notation: W&B's own summary rounds 3.6e-7 to 0.0), where the run
folder is and the command that comes next."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from repvgg_lab.deploy.report import format_number


def _num(value: Any) -> str:
    """The deploy table's number format, two digits after the point in scientific notation."""
    return format_number(value, sci_digits=2)


def _line(label: str, metrics: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    shown = [f"{k} {_num(metrics[k])}" for k in keys if k in metrics]
    return f"{label}: " + ", ".join(shown) if shown else None


def train_summary(metrics: Mapping[str, Any], output_dir: Path) -> list[str]:
    """The summary lines of a `train.py` run."""
    drift = (
        f"drift vs float64: plain {_num(metrics['drift/vs_fp64/deploy_rel_max'])}, multi-branch "
        f"{_num(metrics['drift/vs_fp64/train_rel_max'])} (max|err|/max|ref|), top-1 agreement "
        f"{_num(metrics.get('drift/top1_agree'))}"
        if "drift/vs_fp64/deploy_rel_max" in metrics
        else None
    )
    lines = [
        _line("multi-branch net", metrics, ("val/acc", "test/acc")),
        _line("plain net", metrics, ("deploy/val/acc", "deploy/test/acc")),
        _line("pruned", metrics, ("prune/macs_before", "prune/macs_after", "prune/test/acc")),
        _line("fine-tuned plain net", metrics, ("finetune/val/acc", "finetune/test/acc")),
        drift,
        f"run folder: {output_dir}",
    ]
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        lines.append(f"next: python deploy.py ckpt={last}")
    return [line for line in lines if line]


WORST = ("quant/int8/worst_layer", "quant/int8/worst_sqnr_db")


def deploy_summary(metrics: Mapping[str, Any], out_dir: Path) -> list[str]:
    """The summary lines of a `deploy.py` run."""
    lines = [
        _line("plain net", metrics, ("params/deploy", "macs/deploy", "verify/acc/deploy")),
        _line(
            "drift vs float64",
            metrics,
            ("drift/vs_fp64/deploy_rel_max", "drift/vs_fp64/train_rel_max", "onnx/vs_fp64/rel_max"),
        ),
        _line("ONNX Runtime on real images", metrics, ("verify/acc/onnx",)),
        _line(
            "int8 (ONNX Runtime)",
            metrics,
            ("quant/int8/val/acc", "quant/int8/test/acc", "quant/int8/top1_agree"),
        ),
        _line(
            "int8 weakest layer", metrics, ("quant/int8/worst_layer", "quant/int8/worst_sqnr_db")
        ),
        f"run folder: {out_dir} (model.onnx, model.pt2, model.safetensors, report.json"
        + (", model.int8.onnx, quant_layers.json)" if "quant/int8/top1_agree" in metrics else ")"),
    ]
    return [line for line in lines if line]


def print_summary(title: str, lines: list[str]) -> None:
    """Print the summary block on the console (after every other output of the run)."""
    console = Console(highlight=False)
    console.print(f"[bold]{title}[/bold]")
    for line in lines:
        console.print(f"  {line}", soft_wrap=True)
