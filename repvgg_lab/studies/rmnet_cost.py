"""What the RM conversion costs: parameters, MACs, conversion error and CPU latency of the plain
nets, against the same residual nets with every BN folded (`bnfold`, the fair baseline).

Forms of one model: `source` (training form), `bnfold` (BN folded, residual adds kept), `plain`
(`reparameterize`: grouped bottleneck 3x3, MobileNetV2 unmerged) and `rmnet` (RMNet's layout built
by our converter: dense bottleneck 3x3 or merged 1x1 pairs; only where it differs from `plain`)."""

from __future__ import annotations

import copy
import logging
import os
from functools import partial
from typing import Any

import torch
from torch import nn

from repvgg_lab import create_model, measure_drift, reparameterize
from repvgg_lab.models.plain import ChannelClamp
from repvgg_lab.reparam import BNStats, fuse_conv_bn, rel_max
from repvgg_lab.studies.common import images, render_table, table
from repvgg_lab.testing import trained_like
from repvgg_lab.utils import count_macs, count_params, measure_latency, paired_ratio

log = logging.getLogger(__name__)

MODELS = ["rmnet_resnet18", "rmnet_resnet34", "rmnet_resnet50", "rmnet_mobilenet_v2"]
RMNET_FORM = {
    "rmnet_resnet50": {"grouped_bottleneck": False},
    "rmnet_mobilenet_v2": {"merge_pointwise": True},
}
LABELS = {
    "rmnet_resnet18": "ResNet-18",
    "rmnet_resnet34": "ResNet-34",
    "rmnet_resnet50": "ResNet-50",
    "rmnet_mobilenet_v2": "MobileNetV2",
}


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing conv -> BN (eval statistics), rounded once from float64."""
    kernel, bias = fuse_conv_bn(conv.weight, BNStats.of(bn), conv.bias)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
    return fused


def fold_bn_keep_residual(model: nn.Module) -> nn.Module:
    """A copy with every BN folded into the conv registered just before it (torchvision's
    ResNet/MobileNetV2 register each conv right before its BN); residual adds are kept."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a], parent._modules[b] = _folded_conv(conv, bn), nn.Identity()
    return model


def conv_params(model: nn.Module) -> int:
    """Parameters of the convolutions alone (weights and biases)."""
    return sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    )


def forms(name: str, device: str = "cpu", with_rmnet_form: bool = True) -> dict[str, nn.Module]:
    """The compared forms of one model (device "meta": shapes only, no arithmetic)."""
    if device == "meta":
        with torch.device("meta"):
            source = create_model(name).eval()
    else:
        source = trained_like(name, 0, inputs=images(2, 224)).to(device)
    out = {
        "source": source,
        "bnfold": fold_bn_keep_residual(source),
        "plain": reparameterize(source),
    }
    if with_rmnet_form and name in RMNET_FORM:
        out["rmnet"] = source.to_plain(**RMNET_FORM[name])
    return out


def costs(name: str, size: int) -> dict[str, dict[str, int]]:
    """Parameter, conv-parameter, MAC and conv counts of every form (on the meta device)."""
    return {
        form: {
            "params": count_params(model),
            "conv_params": conv_params(model),
            "macs": count_macs(model, size),
            "convs": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
        }
        for form, model in forms(name, "meta").items()
    }


def drift(name: str, size: int, seed: int) -> dict[str, float]:
    """Conversion error on a trained-like net: float64 plain vs source, and fp32 source/plain vs
    the float64 truth; for clamped nets also the plain net without the cap at 6 (RMNet's PReLU)."""
    source = trained_like(name, seed, inputs=images(4, size, seed + 100))
    x = images(4, size, seed)
    report = measure_drift(source, reparameterize(source), x)
    source64 = copy.deepcopy(source).double()
    plain64 = reparameterize(source64)
    with torch.no_grad():
        y64 = source64(x.double())
        out = {
            "fp64_rel_max": rel_max(y64, plain64(x.double())),
            "fp32_train_rel_max": report.train_rel_max,
            "fp32_deploy_rel_max": report.deploy_rel_max,
            "top1_agree": report.top1_agree,
        }
        clamps = [m for m in plain64.modules() if isinstance(m, ChannelClamp)]
        if clamps:
            for m in clamps:
                m.upper.fill_(float("inf"))
            out["uncapped_fp64_rel_max"] = rel_max(y64, plain64(x.double()))
    return out


def latency(models: dict[str, nn.Module], batch: int, size: int, runs: int, warmup: int) -> dict:
    """Median ms per forward of each form (interleaved rounds) and its paired ratio to bnfold."""
    x = images(batch, size)
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        times = measure_latency({k: partial(m, x) for k, m in models.items()}, runs, warmup)
    load.append(os.getloadavg()[0])
    return {
        "median_ms": {k: v["median_ms"] for k, v in times.items()},
        "ratio": {k: paired_ratio(times, k, "bnfold") for k in times},
        "load": load,
    }


def run(
    models: list[str],
    size: int = 224,
    batches: tuple[int, ...] = (1, 8),
    runs: int = 7,
    warmup: int = 3,
    seeds: tuple[int, ...] | None = None,
    rmnet_form_latency: bool = False,
) -> dict[str, Any]:
    """Counts of every model; conversion error when `seeds`; latency when `batches`."""
    out: dict[str, Any] = {"size": size, "runs": runs, "warmup": warmup, "models": {}}
    for name in models:
        entry: dict[str, Any] = {"cost": costs(name, size)}
        if seeds:
            entry["drift"] = [drift(name, size, seed) for seed in seeds]
            log.info("%s: drift done", name)
        if batches:
            nets = forms(name, "cpu", with_rmnet_form=rmnet_form_latency)
            entry["latency"] = {str(b): latency(nets, b, size, runs, warmup) for b in batches}
            log.info("%s: latency done", name)
        out["models"][name] = entry
    return out


# --- doc blocks --------------------------------------------------------------------------------

FORMS = ("source", "bnfold", "plain", "rmnet")


def _ordered(mapping: dict[str, Any], order: tuple[str, ...] | list[str]) -> list[tuple[str, Any]]:
    """Items in `order` first, then the rest by name (results files store keys sorted)."""
    rank = {key: i for i, key in enumerate(order)}
    return sorted(mapping.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def render_cost(record: dict[str, Any]) -> str:
    """The cost table: counts of every form and their ratios to bnfold."""
    res = record["results"]
    rows = []
    for name, entry in _ordered(res["models"], MODELS):
        base = entry["cost"]["bnfold"]
        for form, c in _ordered(entry["cost"], FORMS):
            rows.append(
                [LABELS.get(name, name), form, c["params"] / 1e6, c["conv_params"] / 1e6]
                + [c["macs"] / 1e9, c["convs"], c["params"] / base["params"]]
                + [c["conv_params"] / base["conv_params"], c["macs"] / base["macs"]]
            )
    columns = [("model", "s"), ("form", "s"), ("params (M)", "f2"), ("conv params (M)", "f2")]
    columns += [("MACs (G)", "f3"), ("convs", "s"), ("params x", "f2")]
    columns += [("conv params x", "f2"), ("MACs x", "f2")]
    note = f"Counts at {res['size']}x{res['size']}, one image; ratios against bnfold."
    return "\n".join([note, "", *render_table(table(columns, rows))])


def render_drift(record: dict[str, Any]) -> str:
    """The conversion-error table: worst over seeds of each comparison."""
    res = record["results"]
    rows = []
    for name, entry in _ordered(res["models"], MODELS):
        runs = entry.get("drift")
        if not runs:
            continue
        worst = {k: max(r[k] for r in runs) for k in runs[0]}
        ratio = max(r["fp32_deploy_rel_max"] / r["fp32_train_rel_max"] for r in runs)
        rows.append(
            [LABELS.get(name, name), worst["fp64_rel_max"], worst["fp32_train_rel_max"]]
            + [worst["fp32_deploy_rel_max"], ratio, worst.get("uncapped_fp64_rel_max")]
        )
    if not rows:
        return "Conversion error not measured in this results file (`--drift`)."
    columns = [
        ("model", "s"),
        ("float64: plain vs source", "e1"),
        ("fp32: source vs float64", "e1"),
    ]
    columns += [("fp32: plain vs float64", "e1"), ("plain / source (fp32)", "f2")]
    columns += [("no cap at 6 (RMNet's PReLU form), float64", "f2")]
    seeds = len(next(e["drift"] for e in res["models"].values() if e.get("drift")))
    note = f"Worst over {seeds} seeds, {res['size']}x{res['size']}, batch 4."
    return "\n".join([note, "", *render_table(table(columns, rows))])


def render_latency(record: dict[str, Any]) -> str:
    """The latency table: paired ratios to bnfold, bnfold's median ms and the load average."""
    res = record["results"]
    rows = []
    for name, entry in _ordered(res["models"], MODELS):
        for batch, lat in sorted(entry.get("latency", {}).items(), key=lambda kv: int(kv[0])):
            ratios = [lat["ratio"].get(f) for f in FORMS]
            rows.append(
                [LABELS.get(name, name), batch, *ratios, lat["median_ms"]["bnfold"], lat["load"]]
            )
    if not rows:
        return "Latency not measured in this results file."
    columns = [("model", "s"), ("batch", "s")] + [(f"{f} x", "f2") for f in FORMS]
    columns += [("bnfold ms", "f2"), ("load avg before / after", "loads")]
    threads = record["machine"]["threads"]
    note = (
        f"fp32, {res['size']}x{res['size']}, {threads} thread(s), {res['runs']} interleaved rounds "
        f"after {res['warmup']} warm-ups; ratio = median per-round time / bnfold's "
        "('-': not timed)."
    )
    return "\n".join([note, "", *render_table(table(columns, rows))])
