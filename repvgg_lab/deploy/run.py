"""`deploy()`: checkpoint -> plain net -> verified exports and a report, all or nothing."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from repvgg_lab.deploy.export import (
    DEFAULT_OPSET,
    OPSETS,
    check_plain_graph,
    export_onnx,
    export_program,
    load_program,
)
from repvgg_lab.deploy.report import drift_metrics, latency_metrics, prune_latency_metrics
from repvgg_lab.deploy.source import Source, load_source, save_plain
from repvgg_lab.deploy.verify import (
    OnnxRunner,
    check_onnx,
    check_real_images,
    check_verify_data,
    real_batches,
    rel_l2,
    run_torch,
    synthetic_batch,
)
from repvgg_lab.errors import DeployError, PruningError
from repvgg_lab.fileio import write_json
from repvgg_lab.models import measure_drift
from repvgg_lab.prune.channels import prune_net
from repvgg_lab.reparam import rel_max, top1_agree
from repvgg_lab.reparam import tolerance as default_tolerance
from repvgg_lab.utils import count_macs, count_params, measure_latency, paired_ratio, torch_threads

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 224
FILES = {
    "onnx": "model.onnx",
    "program": "model.pt2",
    "weights": "model.safetensors",
    "metrics": "metrics.json",
    "report": "report.json",  # moved last: its presence means the export is complete
}


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_options(
    minimum: dict[str, tuple[Any, int]],
    tolerance: float | None,
    batch_sizes: Sequence[int],
    opset: int,
) -> None:
    """One-line errors for option values that make no sense (before any work is done)."""
    if not _is_int(opset, OPSETS.start) or opset not in OPSETS:
        raise DeployError(
            f"export.opset must be an integer from {OPSETS.start} to {OPSETS.stop - 1}, "
            f"got {opset!r}"
        )
    for name, (value, low) in minimum.items():
        if value is not None and not _is_int(value, low):
            raise DeployError(f"{name} must be an integer >= {low}, got {value!r}")
    if tolerance is not None and not (isinstance(tolerance, int | float) and tolerance > 0):
        raise DeployError(f"tolerance must be a positive number, got {tolerance!r}")
    if not all(_is_int(b, 1) for b in batch_sizes):
        raise DeployError(f"latency.batch_sizes must be positive integers, got {list(batch_sizes)}")


def _over(checks: dict[str, float], tolerance: float) -> dict[str, float]:
    """The relative errors above `tolerance` (`not <=` also catches NaN)."""
    return {k: v for k, v in checks.items() if not v <= tolerance}


def _gate(checks: dict[str, float], tolerance: float, hint: str = "") -> None:
    """Refuse (DeployError) when any relative error against the float64 truth is over tolerance."""
    over = _over(checks, tolerance)
    if over:
        worst = ", ".join(f"{k} {v:.3g}" for k, v in over.items())
        raise DeployError(
            f"drift over tolerance {tolerance:g} (max|err|/max|ref| vs float64): {worst}; "
            f"nothing was written{hint}"
        )


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the verified files into place, report.json last."""
    for name in FILES.values():
        os.replace(staging / name, out_dir / name)


def _round_trips(staging: Path, x: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """Load the written program and weights back and check they reproduce the plain net."""
    program = load_program(staging / FILES["program"])
    with torch.no_grad():
        checks = {"torch.export program vs plain net": rel_max(expected, program(x))}
    reloaded = load_source(staging / FILES["weights"])
    checks["safetensors reload vs plain net"] = rel_max(expected, run_torch(reloaded.plain, x))
    bad = ", ".join(f"{k} {v:.3g}" for k, v in _over(checks, tolerance).items())
    if bad:
        raise DeployError(f"an export does not reproduce the plain net: {bad} > {tolerance:g}")


def _latency(
    src: Source,
    runner: OnnxRunner,
    input_size: int,
    batch_sizes: Sequence[int],
    rounds: int,
    warmup: int,
    unpruned: torch.nn.Module | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median latency metrics, and every round's times (report.json) to judge the noise; with
    `unpruned`, the plain net before pruning runs in the same rounds (`prune/latency_*` at
    batch 1)."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        x = torch.randn(batch, src.in_channels, input_size, input_size, generator=gen)
        fns = {"deploy": partial(src.plain, x), "onnx": partial(runner.run_numpy, x.numpy())}
        if unpruned is not None:
            fns = {"unpruned": partial(unpruned, x), **fns}
        if src.source is not None:
            fns = {"train": partial(src.source, x), **fns}
        with torch.inference_mode():
            results = measure_latency(fns, rounds=rounds, warmup=warmup)
        metrics.update(latency_metrics(batch, results))
        details[f"bs{batch}"] = results
        if "train" in results:
            metrics[f"latency/bs{batch}/speedup"] = paired_ratio(results, "train", "deploy")
        if unpruned is not None and batch == 1:
            metrics.update(prune_latency_metrics(results, "unpruned", "deploy"))
        log.info(
            "latency at batch %d: %s",
            batch,
            {k: round(v["median_ms"], 2) for k, v in results.items()},
        )
    return metrics, details


def _report(
    src: Source,
    ckpt: str | Path,
    out_dir: Path,
    metrics: dict[str, Any],
    settings: dict[str, Any],
    ops: dict[str, int],
    blocks: dict[str, Any],
) -> dict[str, Any]:
    return {
        "metrics": metrics,
        "source": {
            "ckpt": str(ckpt),
            "format": src.format,
            "model": src.model_name,
            "model_kwargs": src.model_kwargs,
            "num_classes": src.num_classes,
            "in_channels": src.in_channels,
            "deploy_form": src.deploy_form,
        },
        "reference": (
            "plain net in float64 (the checkpoint was already plain: no multi-branch source)"
            if src.deploy_form
            else "multi-branch net in float64"
        ),
        "settings": settings,
        "onnx_ops": ops,
        "drift_blocks": blocks,
        "files": dict(FILES),
        "out_dir": str(out_dir),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


def _costs(src: Source, input_size: int) -> dict[str, int | None]:
    size = (input_size, input_size)
    train = src.source
    return {
        "params/train": count_params(train) if train is not None else None,
        "params/deploy": count_params(src.plain),
        "macs/train": count_macs(train, size, src.in_channels) if train is not None else None,
        "macs/deploy": count_macs(src.plain, size, src.in_channels),
    }


def _real_images(
    src: Source,
    runner: OnnxRunner,
    images: tuple[torch.Tensor, torch.Tensor],
    unpruned: torch.nn.Module | None = None,
) -> dict[str, float]:
    x, labels = images
    outputs = {"deploy": run_torch(src.plain, x), "onnx": runner(x)}
    if src.source is not None:
        outputs["train"] = run_torch(src.source, x)
    if unpruned is not None:
        outputs["unpruned"] = run_torch(unpruned, x)
    # The float64 truth is the source, or the plain net as loaded when there is no source.
    reference = next(n for n in (src.source, unpruned, src.plain) if n is not None)
    truth = run_torch(reference, x, torch.float64)
    return check_real_images(outputs, truth, labels)


def _prune(
    src: Source,
    options: Mapping[str, Any],
    input_size: int,
    x: torch.Tensor,
    truth: torch.Tensor,
    tolerance: float,
    hint: str,
    calibration: torch.Tensor | None = None,
) -> tuple[torch.nn.Module, dict[str, float], dict[str, Any], torch.Tensor]:
    """Prune `src.plain` (verified already) and put the pruned net in its place.

    `options` are `prune_net`'s; with `max_batches` among them, the `calibration` images (split
    into batches of the verification batch size) recalibrate lossy pruning.
    Returns the unpruned plain net, the `prune/*` metrics, the pruning summary and the float64
    reference the exports are checked against. Exact pruning (every removed channel scored 0)
    claims the source's function, so it must stay within `tolerance` of the source's float64
    truth like the conversion itself; lossy pruning changes the function on purpose, so its
    deviation is reported (`prune/rel_max`, `prune/top1_agree`), not refused, and the exports
    are checked against the pruned net in float64 instead."""
    unpruned = src.plain
    options = dict(options)
    if "max_batches" in options:
        assert calibration is not None  # deploy() loads verify.data first
        options["batches"] = calibration.split(len(x))
    try:
        pruned, summary = prune_net(unpruned, input_size, **options)
    except PruningError as err:
        raise DeployError(f"cannot prune {src.model_name}: {err}") from None
    pruned.eval()
    y = run_torch(pruned, x)
    exact = bool(summary["exact"])
    metrics: dict[str, float] = {k: v for k, v in summary.items() if k.startswith("prune/")}
    metrics.update(
        {
            "prune/rel_max": rel_max(truth, y),
            "prune/top1_agree": top1_agree(truth, y),
        }
    )
    if exact:
        _gate({"exactly pruned net": metrics["prune/rel_max"]}, tolerance, hint)
    log.info(
        "pruned (%s): MACs %d -> %d, max|err|/max|ref| vs float64 of the source %.3g",
        "exact" if exact else "lossy",
        metrics["prune/macs_before"],
        metrics["prune/macs_after"],
        metrics["prune/rel_max"],
    )
    src.plain = pruned
    reference = truth if exact else run_torch(pruned, x, torch.float64)
    return unpruned, metrics, summary, reference


def _write_exports(
    src: Source,
    staging: Path,
    x: torch.Tensor,
    truth: torch.Tensor,
    tolerance: float,
    opset: int,
    hint: str,
) -> tuple[dict[str, int], OnnxRunner, dict[str, float]]:
    """Write ONNX, program and weights into `staging` and check each: the ONNX graph is plain
    and within tolerance of float64 (on `x` and on another shape), the others reload exactly."""
    proto = export_onnx(src.plain, staging / FILES["onnx"], x[:2], opset)
    ops = check_plain_graph(proto)
    runner = OnnxRunner(staging / FILES["onnx"])
    size = x.shape[-1]
    other = (3, src.in_channels, size + 16, size + 8)
    metrics = check_onnx(runner, src.plain, x, truth, tolerance, other_shape=other)
    _gate({"ONNX model": metrics["onnx/vs_fp64/rel_max"]}, tolerance, hint)
    export_program(src.plain, staging / FILES["program"], x[:2])
    save_plain(src, staging / FILES["weights"])
    y_plain = run_torch(src.plain, x)
    _round_trips(staging, x, y_plain, tolerance)
    # The plain PyTorch net's whole-output error, to set beside ONNX Runtime's.
    metrics["drift/vs_fp64/deploy_rel_l2"] = rel_l2(truth, y_plain)
    return ops, runner, metrics


def deploy(
    ckpt: str | Path,
    model: str | None = None,
    out_dir: str | Path = ".",
    input_size: int | None = None,
    tolerance: float | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    rounds: int = 9,
    warmup: int = 3,
    verify_data: str | None = None,
    verify_root: str | None = None,
    verify_size: int = 64,
    verify_batch: int = 8,
    opset: int = DEFAULT_OPSET,
    seed: int | None = 0,
    threads: int | None = None,
    prune: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert the net in `ckpt`, verify it against float64, export it to `out_dir`; the report.

    Files land in `out_dir` only after every check passed (ONNX graph plain, ONNX Runtime and
    reloaded exports agree with PyTorch, drift within `tolerance`); otherwise DeployError and
    the folder is left as it was. `input_size` defaults to the training resolution the checkpoint
    records, else 224; `threads` sets the CPU threads of PyTorch and ONNX Runtime. `prune`
    (keyword arguments of `repvgg_lab.models.prune.prune_net`, e.g. `{"threshold": 0.0}`)
    prunes the verified plain net and exports the pruned one (see `_prune` for what is checked)."""
    minimum = {
        "input_size": (input_size, 1),
        "latency.rounds": (rounds, 1),
        "latency.warmup": (warmup, 0),
        "verify.batch": (verify_batch, 1),
        "verify.size": (verify_size, 1),
        "threads": (threads, 1),
    }
    _check_options(minimum, tolerance, batch_sizes, opset)
    check_verify_data(verify_data, verify_root)
    if prune is not None and "max_batches" in prune and not verify_data:
        raise DeployError(
            "prune.calibration_batches needs real images: set verify.data=digits|imagenet"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployError(f"out_dir is not a folder: {out_dir}")
    with torch_threads(threads):
        src = load_source(ckpt, model)
        input_size = input_size or src.input_size or DEFAULT_INPUT_SIZE
        # Recorded with the weights: the size the exports were checked at.
        src.input_size = input_size
        reference_net = src.source if src.source is not None else src.plain
        dtype = next(src.plain.parameters()).dtype
        tol = float(tolerance) if tolerance is not None else default_tolerance(dtype)

        # 1. The plain net against the float64 truth, before anything touches the disk.
        x = synthetic_batch(verify_batch, src.in_channels, input_size, seed)
        drift = measure_drift(reference_net, src.plain, x)
        truth = run_torch(reference_net, x, torch.float64)
        hint = (
            f" ({drift.underflow_frac:.1%} of float64 activations underflow {drift.dtype}: "
            "the error may be an underflow artefact)"
            if drift.underflow
            else ""
        )
        _gate({"plain net": drift.deploy_rel_max}, tol, hint)
        sizes = {"val": verify_size} if verify_data else {}
        if prune is not None and "max_batches" in prune:
            # Calibration on training images: the validation images verify the result, unseen.
            sizes["train"] = prune["max_batches"] * verify_batch
        real = (
            real_batches(verify_data, verify_root, input_size, src.in_channels, sizes)
            if verify_data
            else {}
        )
        images = real.get("val")
        unpruned, prune_metrics, prune_summary, export_truth = None, {}, None, truth
        if prune is not None:
            calibration = real["train"][0] if "train" in real else None
            unpruned, prune_metrics, prune_summary, export_truth = _prune(
                src, prune, input_size, x, truth, tol, hint, calibration
            )

        # 2. Export into a staging folder inside out_dir, check every file, then move into place.
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".deploy-", dir=out_dir))
        except OSError as err:
            raise DeployError(f"cannot write to out_dir={out_dir}: {err.strerror}") from None
        try:
            metrics: dict[str, Any] = drift_metrics(drift, src.source is not None)
            ops, runner, onnx_metrics = _write_exports(
                src, staging, x, export_truth, tol, opset, hint
            )
            metrics.update(onnx_metrics)
            metrics.update(_costs(src, input_size))
            metrics.update(prune_metrics)
            if images is not None:
                metrics.update(_real_images(src, runner, images, unpruned))
            timing, latency = _latency(
                src, runner, input_size, batch_sizes, rounds, warmup, unpruned
            )
            metrics.update(timing)
            settings = {
                "input_size": input_size,
                "tolerance": tol,
                "dtype": str(dtype).removeprefix("torch."),
                "verify_batch": verify_batch,
                "verify_data": verify_data,
                "verify_size": verify_size if verify_data else None,
                "seed": seed,
                "opset": opset,
                "batch_sizes": list(batch_sizes),
                "rounds": rounds,
                "warmup": warmup,
                "threads": torch.get_num_threads(),
                "prune": dict(prune) if prune is not None else None,
            }
            report = _report(src, ckpt, out_dir, metrics, settings, ops, drift.blocks)
            report["latency"] = latency
            if prune_summary is not None:
                report["prune"] = prune_summary
                if not prune_metrics["prune/exact"]:
                    report["reference"] += (
                        "; exports checked against the pruned net in float64 (lossy pruning: "
                        "its deviation from the reference is prune/rel_max)"
                    )
            write_json(staging / FILES["metrics"], metrics)
            write_json(staging / FILES["report"], report)
            _publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s to %s", ", ".join(FILES.values()), out_dir)
    return report
