"""`deploy()`: checkpoint -> plain net -> verified exports and a report, all or nothing.

The work is a sequence of named steps (`repvgg_lab.deploy.steps`): load, verify against
float64, prune, stage and check the exports, measure; then the report is assembled once from
their results and published (the staged files moved into place, report.json last)."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from repvgg_lab.deploy import steps
from repvgg_lab.deploy.int8 import Quantized, quantize
from repvgg_lab.deploy.options import DeployOptions
from repvgg_lab.deploy.report import FILES
from repvgg_lab.errors import DeployError
from repvgg_lab.fileio import missing_folders, remove_created, write_json
from repvgg_lab.utils import torch_threads

log = logging.getLogger(__name__)

_REFERENCE = {
    True: "plain net in float64 (the checkpoint was already plain: no multi-branch source)",
    False: "multi-branch net in float64",
}
_LOSSY = (
    "; exports checked against the pruned net in float64 (lossy pruning: its deviation from "
    "the reference is prune/rel_max)"
)


def _settings(options: DeployOptions, loaded: steps.Loaded, quantized: Quantized) -> dict[str, Any]:
    """report.json's `settings`: the options as they were applied."""
    return {
        "input_size": loaded.input_size,
        "tolerance": loaded.tolerance,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "verify_batch": options.verify_batch,
        "verify_data": options.verify_data,
        "verify_size": options.verify_size if options.verify_data else None,
        "seed": options.seed,
        "opset": options.opset,
        "batch_sizes": list(options.batch_sizes),
        "rounds": options.rounds,
        "warmup": options.warmup,
        "threads": torch.get_num_threads(),
        "prune": options.prune.as_dict() if options.prune is not None else None,
        "quantize": quantized.settings,
    }


def _source(ckpt: str | Path, loaded: steps.Loaded) -> dict[str, Any]:
    """report.json's `source`: what the checkpoint held."""
    src = loaded.src
    return {
        "ckpt": str(ckpt),
        "format": src.format,
        "model": src.model_name,
        "model_kwargs": src.model_kwargs,
        "num_classes": src.num_classes,
        "in_channels": src.in_channels,
        "deploy_form": src.deploy_form,
        "weights": src.weights,
    }


def assemble(
    ckpt: str | Path,
    options: DeployOptions,
    loaded: steps.Loaded,
    verified: steps.Verified,
    pruned: steps.Pruned,
    staged: steps.Staged,
    measured: steps.Measured,
    quantized: Quantized,
) -> dict[str, Any]:
    """The report, built once from the results of the steps."""
    report = {
        "metrics": {**steps.metrics_of(verified, pruned, staged, measured), **quantized.metrics},
        "source": _source(ckpt, loaded),
        "reference": _REFERENCE[loaded.src.deploy_form] + (_LOSSY if pruned.lossy else ""),
        "settings": _settings(options, loaded, quantized),
        "onnx_ops": staged.ops,
        "drift_blocks": verified.drift.blocks,
        "files": {**FILES, **quantized.files},
        "out_dir": str(options.out_dir),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "latency": measured.latency,
        "load": measured.load,
    }
    if pruned.summary is not None:
        report["prune"] = pruned.summary
    return report


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A fresh hidden folder inside `out_dir` (created if needed), removed afterwards whatever
    happens: the exports are written and checked there before anything is published. A deploy
    that fails also removes the `out_dir` folders it created (a refusal leaves no new folder)."""
    created = missing_folders(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".deploy-", dir=out_dir))
    except OSError as err:
        remove_created(created)
        raise DeployError(f"cannot write to out_dir={out_dir}: {err.strerror}") from None
    published = False
    try:
        yield staging
        published = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not published:
            remove_created(created)


def publish(report: dict[str, Any], staging: Path, out_dir: Path) -> None:
    """Write metrics.json and report.json beside the staged exports, then move every file
    into `out_dir`, report.json last: its presence means the export is complete."""
    write_json(staging / FILES["metrics"], report["metrics"])
    write_json(staging / FILES["report"], report)
    names = [n for key, n in report["files"].items() if key != "report"] + [FILES["report"]]
    for name in names:
        os.replace(staging / name, out_dir / name)
    log.info("wrote %s to %s", ", ".join(names), out_dir)


def deploy(ckpt: str | Path, options: DeployOptions | None = None, **fields: Any) -> dict[str, Any]:
    """Convert the net in `ckpt`, verify it against float64, export it; returns the report.

    `options` (or its fields as keywords: `deploy(ckpt, out_dir="out", tolerance=1e-4)`) say
    how. Files land in `options.out_dir` only after every check passed (ONNX graph plain, ONNX
    Runtime and reloaded exports agree with PyTorch, drift within tolerance); otherwise a
    one-line DeployError and the folder is left as it was. With `options.prune` the verified
    plain net is pruned and the pruned one exported (`steps.prune` says what is checked)."""
    if options is None:
        options = DeployOptions(**fields)
    elif fields:
        raise TypeError(f"deploy() takes options or their fields, not both: {sorted(fields)}")
    if options.out_dir.exists() and not options.out_dir.is_dir():
        raise DeployError(f"out_dir is not a folder: {options.out_dir}")
    with torch_threads(options.threads):
        loaded = steps.load(ckpt, options)
        verified = steps.verify(loaded, options)
        pruned = steps.prune(loaded, verified, options)
        with _staging(options.out_dir) as staging:
            staged = steps.stage(pruned, verified, loaded.tolerance, options.opset, staging)
            measured = steps.measure(loaded, verified, pruned, staged, options)
            quantized = quantize(pruned.src.plain, verified.real, options, staging)
            report = assemble(ckpt, options, loaded, verified, pruned, staged, measured, quantized)
            publish(report, staging, options.out_dir)
    return report
