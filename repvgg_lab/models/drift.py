"""Conversion drift: multi-branch vs plain, each against a float64 evaluation of the source."""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from repvgg_lab.models.convert import convertible_modules
from repvgg_lab.reparam import compare, rel_max, underflow_fraction
from repvgg_lab.utils import evaluating, exact_fp32

log = logging.getLogger(__name__)


# Stable metric name (after the "drift/" prefix) -> DriftReport field.
METRIC_NAMES = {
    "max_abs": "max_abs",
    "rel_max": "rel_max",
    "top1_agree": "top1_agree",
    "vs_fp64/train_rel_max": "train_rel_max",
    "vs_fp64/deploy_rel_max": "deploy_rel_max",
    "underflow_frac": "underflow_frac",
}


@dataclass
class DriftReport:
    """Drift of a converted net, all on the same input batch.

    `max_abs`, `rel_max`, `top1_agree`: source vs plain in the working dtype. `train_rel_max` /
    `deploy_rel_max`: source / plain vs the float64 truth. `underflow_frac`: share of non-zero
    float64 block outputs that the working dtype can only hold as denormals or zero; when it is
    non-zero the end-to-end numbers are underflow artefacts, so read `blocks` (each block fed a
    unit-scale copy of its own float64 input)."""

    max_abs: float
    rel_max: float
    top1_agree: float
    train_rel_max: float
    deploy_rel_max: float
    underflow_frac: float
    dtype: str
    blocks: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def underflow(self) -> bool:
        return self.underflow_frac > 0

    def metrics(self, prefix: str = "drift/", per_block: bool = False) -> dict[str, float]:
        """Flat metrics under the stable names (drift/max_abs, drift/vs_fp64/..., ...)."""
        out = {f"{prefix}{name}": getattr(self, attr) for name, attr in METRIC_NAMES.items()}
        if per_block:
            for name, values in self.blocks.items():
                out.update({f"{prefix}block/{name}/{k}": v for k, v in values.items()})
        return out


def _record_io(model: nn.Module, names: list[str]) -> tuple[dict[str, Tensor], list]:
    store: dict[str, Tensor] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
            store[name + ".in"] = args[0].detach()
            store[name + ".out"] = out.detach()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return store, handles


def _unit_scale(x: Tensor) -> Tensor:
    std = x.std()
    return x / std if float(std) > 0 else x


def _plain_block(plain: nn.Module, source_block: nn.Module, name: str) -> nn.Module:
    """What stands for a source block in the plain net: its plain module, followed by the BN
    restored beside it when the block replaced a user's conv + BN pair (`add_branches`, offline;
    an online block is the conv alone, its BN stayed in the net)."""
    module = plain.get_submodule(name)
    bn_name = getattr(source_block, "bn_name", None)
    if bn_name is None or getattr(source_block, "online", False):
        return module
    parent = name.rpartition(".")[0]
    return nn.Sequential(module, plain.get_submodule(f"{parent}.{bn_name}" if parent else bn_name))


def _block_drift(
    source: nn.Module,
    plain: nn.Module,
    reference: nn.Module,
    store: dict[str, Tensor],
    names: list[str],
) -> dict[str, dict[str, float]]:
    """Each block fed a unit-scale copy of its own float64 input: multi-branch and plain vs
    the float64 block, and vs each other."""
    dtype = next(source.parameters()).dtype
    blocks = {}
    for name in names:
        xb = _unit_scale(store[name + ".in"])
        truth = reference.get_submodule(name)(xb)
        multi = source.get_submodule(name)(xb.to(dtype))
        single = _plain_block(plain, source.get_submodule(name), name)(xb.to(dtype))
        blocks[name] = {
            "train_rel_max": rel_max(truth, multi),
            "deploy_rel_max": rel_max(truth, single),
            "rel_max": rel_max(multi, single),
        }
    return blocks


def measure_drift(
    source: nn.Module,
    plain: nn.Module,
    inputs: Tensor,
    *,
    per_block: bool = True,
    allow_tf32: bool = False,
) -> DriftReport:
    """Compare `plain` (the converted net) with `source` (the multi-branch net) on `inputs`.

    Both run in eval mode in the dtype of `source`; the truth is a float64 copy of `source`.
    Train/eval flags of the given modules are restored afterwards."""
    dtype = next(source.parameters()).dtype
    device = next(source.parameters()).device
    reference = copy.deepcopy(source).to(torch.float64)
    block_names = [n for n, _ in convertible_modules(source) if n]
    plain_modules = dict(plain.named_modules())
    block_names = [n for n in block_names if n in plain_modules]
    guard = contextlib.nullcontext() if allow_tf32 else exact_fp32()
    with guard, torch.no_grad(), evaluating(source, plain, reference):
        x = inputs.to(device)
        y_src = source(x.to(dtype))
        y_plain = plain(x.to(dtype))
        store, handles = _record_io(reference, block_names)
        try:
            y_ref = reference(x.to(torch.float64))
        finally:
            for h in handles:
                h.remove()
        outputs = [store[n + ".out"] for n in block_names] or [y_ref]
        underflow = underflow_fraction(torch.cat([o.flatten() for o in outputs]), dtype)
        blocks = _block_drift(source, plain, reference, store, block_names) if per_block else {}
    pair = compare(y_src, y_plain)
    report = DriftReport(
        max_abs=pair["max_abs"],
        rel_max=pair["rel_max"],
        top1_agree=pair["top1_agree"],
        train_rel_max=rel_max(y_ref, y_src),
        deploy_rel_max=rel_max(y_ref, y_plain),
        underflow_frac=underflow,
        dtype=str(dtype).removeprefix("torch."),
        blocks=blocks,
    )
    if report.underflow:
        log.warning(
            "%.1f%% of the float64 activations underflow %s: end-to-end drift is an underflow "
            "artefact here; read the per-block numbers",
            100 * underflow,
            report.dtype,
        )
    return report
