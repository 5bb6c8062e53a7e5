"""The steps of `deploy()`, in order: load, verify against float64, prune, stage and check the
exports, measure. Each takes the results before it and returns a small frozen result; none
changes what it is given (a pruned net goes into a new `Source`)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from repvgg_lab.deploy.options import DEFAULT_INPUT_SIZE, DeployOptions
from repvgg_lab.deploy.report import FILES, drift_metrics, latency_metrics
from repvgg_lab.deploy.source import Source, load_source, save_plain
from repvgg_lab.deploy.verify import check_onnx, real_loaders, rel_l2, synthetic_batch
from repvgg_lab.errors import DeployError, PruningError
from repvgg_lab.models import DriftReport, measure_drift
from repvgg_lab.prune import prune_and_measure
from repvgg_lab.reparam import rel_max, top1_agree
from repvgg_lab.reparam import tolerance as default_tolerance
from repvgg_lab.runtime import OnnxRunner, evaluate_stream, run_torch, torch_fn
from repvgg_lab.runtime.export import (
    check_exported_graph,
    export_onnx,
    export_program,
    load_program,
)
from repvgg_lab.utils import count_macs, count_params, machine_load, measure_latency

log = logging.getLogger(__name__)

TRUTH = "fp64"  # the float64 evaluation of the reference net, among the streamed nets


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


# ----------------------------------------------------------------------------- 1. load


@dataclass(frozen=True)
class Loaded:
    """The checkpoint's nets, with the input size and tolerance every later check uses."""

    src: Source  # its input_size is `input_size`, saved with the weights
    input_size: int  # H = W of every check, count and timing
    tolerance: float
    dtype: torch.dtype

    @property
    def reference(self) -> nn.Module:
        """The net whose float64 evaluation is the truth: the source, else the plain net."""
        return self.src.trained if self.src.trained is not None else self.src.plain


def load(ckpt: str | Path, options: DeployOptions) -> Loaded:
    """Read the checkpoint and convert it; settle the input size and the tolerance."""
    src = load_source(ckpt, options.model)
    size = options.input_size or src.input_size or DEFAULT_INPUT_SIZE
    dtype = next(src.plain.parameters()).dtype
    tol = float(options.tolerance) if options.tolerance is not None else default_tolerance(dtype)
    return Loaded(dataclasses.replace(src, input_size=size), size, tol, dtype)


# ----------------------------------------------------------------------------- 2. verify


@dataclass(frozen=True)
class Verified:
    """The plain net checked against the float64 truth on a synthetic batch; real images."""

    x: Tensor  # the synthetic verification batch
    truth: Tensor  # the reference net's float64 outputs on it
    drift: DriftReport
    hint: str  # appended to drift errors when float64 activations underflow the dtype
    # Loaders of real images: "verify" (verify.size validation images to check the exports on),
    # "train" (calibration), and with int8 the whole "val" and "test" splits ("test" left out
    # when it is the validation folder itself).
    real: dict[str, DataLoader]

    @property
    def images(self) -> DataLoader | None:
        """Real validation images and labels to check the exports on (None: no verify.data)."""
        return self.real.get("verify")

    @property
    def calibration(self) -> DataLoader | None:
        """Real training images that recalibrate lossy pruning (None: none asked for)."""
        return self.real.get("train")


def verify(loaded: Loaded, options: DeployOptions) -> Verified:
    """Refuse a plain net that drifts from float64 before anything touches the disk; load the
    real images (validation ones to check, training ones to calibrate pruning)."""
    src, size = loaded.src, loaded.input_size
    x = synthetic_batch(options.verify_batch, src.in_channels, size, options.seed)
    drift = measure_drift(loaded.reference, src.plain, x)
    truth = run_torch(loaded.reference, x, torch.float64)
    hint = (
        f" ({drift.underflow_frac:.1%} of float64 activations underflow {drift.dtype}: "
        "the error may be an underflow artefact)"
        if drift.underflow
        else ""
    )
    _gate({"plain net": drift.deploy_rel_max}, loaded.tolerance, hint)
    requests: dict[str, tuple[str, int | None]] = {}
    if options.verify_data:
        requests["verify"] = ("val", options.verify_size)
    if options.quantize is not None:
        # int8 accuracy is measured on whole splits, never on the calibration images.
        requests.update(val=("val", None), test=("test", None))
    if options.calibration_images:
        # Calibration on training images: the validation images verify the result, unseen.
        requests["train"] = ("train", options.calibration_images)
    real = {}
    if options.verify_data:
        data, root, batch = options.verify_data, options.verify_root, options.verify_batch
        real = real_loaders(data, root, size, src.in_channels, requests, batch, options.workers)
    return Verified(x, truth, drift, hint, real)


# ----------------------------------------------------------------------------- 3. prune


@dataclass(frozen=True)
class Pruned:
    """The net to export (`src.plain`), and what pruning it did (nothing without `prune`)."""

    src: Source
    truth: Tensor  # what the exports are checked against (float64)
    unpruned: nn.Module | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    summary: dict[str, Any] | None = None

    @property
    def lossy(self) -> bool:
        """True when pruning changed the function (the exports follow the pruned net)."""
        return self.summary is not None and not self.summary["exact"]


def prune(loaded: Loaded, verified: Verified, options: DeployOptions) -> Pruned:
    """Prune the verified plain net when asked (calibrated on `verified`'s training images).

    Exact pruning claims the source's function, so it must stay within tolerance of the float64
    truth like the conversion itself; lossy pruning changes the function on purpose, so its
    deviation is reported (`prune/rel_max`, `prune/top1_agree`), not refused, and the exports
    are checked against the pruned net in float64 instead."""
    pruning, src = options.prune_timing, loaded.src
    if pruning is None:
        return Pruned(src, verified.truth)
    try:
        result = prune_and_measure(src.plain, pruning, loaded.input_size, verified.calibration)
    except PruningError as err:
        raise DeployError(f"cannot prune {src.model_name}: {err}") from None
    net = result.net.eval()
    y = run_torch(net, verified.x)
    metrics = dict(result.metrics)
    metrics["prune/rel_max"] = rel_max(verified.truth, y)
    metrics["prune/top1_agree"] = top1_agree(verified.truth, y)
    if result.exact:
        _gate({"exactly pruned net": metrics["prune/rel_max"]}, loaded.tolerance, verified.hint)
    log.info("pruned: max|err|/max|ref| vs float64 of the source %.3g", metrics["prune/rel_max"])
    truth = verified.truth if result.exact else run_torch(net, verified.x, torch.float64)
    pruned_src = dataclasses.replace(src, plain=net)
    return Pruned(pruned_src, truth, src.plain, metrics, result.summary)


# ----------------------------------------------------------------------------- 4. stage


@dataclass(frozen=True)
class Staged:
    """The exports written into the staging folder, each checked."""

    ops: dict[str, int]  # ONNX op counts (a plain graph)
    runner: OnnxRunner  # an ONNX Runtime session over the staged model
    metrics: dict[str, float]


def _round_trips(staging: Path, x: Tensor, expected: Tensor, tolerance: float) -> None:
    """Load the written program and weights back and check they reproduce the plain net."""
    program = load_program(staging / FILES["program"])
    with torch.no_grad():
        checks = {"torch.export program vs plain net": rel_max(expected, program(x))}
    reloaded = load_source(staging / FILES["weights"])
    checks["safetensors reload vs plain net"] = rel_max(expected, run_torch(reloaded.plain, x))
    bad = ", ".join(f"{k} {v:.3g}" for k, v in _over(checks, tolerance).items())
    if bad:
        raise DeployError(f"an export does not reproduce the plain net: {bad} > {tolerance:g}")


def stage(
    pruned: Pruned, verified: Verified, tolerance: float, opset: int, staging: Path
) -> Staged:
    """Write ONNX, program and weights into `staging` and check each: the ONNX graph is plain
    (tv_* nets: the architecture's own graph) and within tolerance of float64 (on the batch and
    on another shape), the others reload."""
    src, x, truth = pruned.src, verified.x, pruned.truth
    proto = export_onnx(src.plain, staging / FILES["onnx"], x[:2], opset)
    ops = check_exported_graph(
        proto, src.model_name, src.num_classes, src.model_kwargs, x[:2], opset
    )
    runner = OnnxRunner(staging / FILES["onnx"])
    size = x.shape[-1]
    other = (3, src.in_channels, size + 16, size + 8)
    metrics = check_onnx(runner, src.plain, x, truth, tolerance, other_shape=other)
    _gate({"ONNX model": metrics["onnx/vs_fp64/rel_max"]}, tolerance, verified.hint)
    export_program(src.plain, staging / FILES["program"], x[:2])
    save_plain(src, staging / FILES["weights"])
    y_plain = run_torch(src.plain, x)
    _round_trips(staging, x, y_plain, tolerance)
    # The plain PyTorch net's whole-output error, to set beside ONNX Runtime's.
    metrics["drift/vs_fp64/deploy_rel_l2"] = rel_l2(truth, y_plain)
    return Staged(ops, runner, metrics)


# ----------------------------------------------------------------------------- 5. measure


@dataclass(frozen=True)
class Measured:
    """Costs, real-image agreement and latency of the exported net beside the others."""

    costs: dict[str, int | None]  # params/* and macs/* of the source and the export
    metrics: dict[str, float]  # verify/* on real images, latency/*
    latency: dict[str, Any]  # every round's times per batch size (report.json: the noise)
    load: dict[str, Any] | None  # the machine's load before timing (None: nothing timed)


def _costs(src: Source, input_size: int) -> dict[str, int | None]:
    """Parameters and MACs of the multi-branch source (None if there is none) and the export."""
    size, train = (input_size, input_size), src.trained
    return {
        "params/train": count_params(train) if train is not None else None,
        "params/deploy": count_params(src.plain),
        "macs/train": count_macs(train, size, src.in_channels) if train is not None else None,
        "macs/deploy": count_macs(src.plain, size, src.in_channels),
    }


def _nets(pruned: Pruned, runner: OnnxRunner) -> dict[str, Any]:
    """Every net to compare, as callables on a tensor, in the report's column order."""
    src = pruned.src
    nets: dict[str, Any] = {"train": src.trained, "unpruned": pruned.unpruned}
    nets.update(deploy=src.plain, onnx=runner)
    return {k: v for k, v in nets.items() if v is not None}


def _real_images(pruned: Pruned, runner: OnnxRunner, images: DataLoader) -> dict[str, float]:
    """Top-1 agreement with the float64 truth and accuracy of every net on real images,
    streamed batch by batch."""
    fns = {k: net if k == "onnx" else torch_fn(net) for k, net in _nets(pruned, runner).items()}
    # The float64 truth is the source, or the plain net as loaded when there is no source.
    src = pruned.src
    reference = next(n for n in (src.trained, pruned.unpruned, src.plain) if n is not None)
    fns[TRUTH] = torch_fn(reference, torch.float64)
    result = evaluate_stream(fns, images, reference=TRUTH, desc="verify on real images")
    metrics: dict[str, float] = {"verify/images": result.images}
    for name in fns:
        if name != TRUTH:
            metrics[f"verify/top1_agree/{name}"] = result.top1_agree[name]
            metrics[f"verify/acc/{name}"] = result.acc[name]
    return metrics


def _latency(
    pruned: Pruned, runner: OnnxRunner, input_size: int, options: DeployOptions
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median latency of every net at each batch size, interleaved, and each round's times."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for batch in options.batch_sizes:
        x = torch.randn(batch, pruned.src.in_channels, input_size, input_size, generator=gen)
        fns = {k: partial(net, x) for k, net in _nets(pruned, runner).items() if k != "onnx"}
        fns["onnx"] = partial(runner.run_numpy, x.numpy())
        with torch.inference_mode():
            results = measure_latency(fns, rounds=options.rounds, warmup=options.warmup)
        metrics.update(latency_metrics(batch, results))
        details[f"bs{batch}"] = results
        if "train" in results:
            # The ratio of the medians the table prints beside it (a median of per-round ratios
            # can sit far from it when load spikes hit the nets in different rounds).
            ratio = results["train"]["median_ms"] / results["deploy"]["median_ms"]
            metrics[f"latency/bs{batch}/speedup"] = ratio
        medians = {k: round(v["median_ms"], 2) for k, v in results.items()}
        log.info("latency at batch %d: %s", batch, medians)
    return metrics, details


def measure(
    loaded: Loaded, verified: Verified, pruned: Pruned, staged: Staged, options: DeployOptions
) -> Measured:
    """Costs of the exported net, its agreement on real images, and latency."""
    metrics: dict[str, float] = {}
    if verified.images is not None:
        metrics.update(_real_images(pruned, staged.runner, verified.images))
    load = machine_load() if options.batch_sizes else None
    if load is not None and load["busy"]:
        log.warning("machine busy before timing: %s; latency is not reliable", load)
    timing, latency = _latency(pruned, staged.runner, loaded.input_size, options)
    metrics.update(timing)
    return Measured(_costs(pruned.src, loaded.input_size), metrics, latency, load)


def metrics_of(verified: Verified, pruned: Pruned, staged: Staged, measured: Measured) -> dict:
    """metrics.json: drift, ONNX checks, costs, pruning, real images and latency, in that order."""
    has_source = pruned.src.trained is not None
    metrics: dict[str, Any] = dict(drift_metrics(verified.drift, has_source))
    for part in (staged.metrics, measured.costs, pruned.metrics, measured.metrics):
        metrics.update(part)
    return metrics
