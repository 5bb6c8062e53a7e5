"""The precision facts behind docs/precision.md, measured with the library's own tools.

Each case returns a table record (`common.table`: columns with formats, rows of raw numbers) with
a title and notes; `run` collects them and `render_case` turns one into its doc block.
  report     the user report: RepVGG-B2g4, kaiming (fan_out) convs, BN 1/0 vs 0.01/0.01
  fusion     float64 fusion rounded once (ours) vs timm's fp32 fusion, against the fp64 truth
  bf16       the same net converted and evaluated in bfloat16
  tf32       fp32 with TF32 on vs off (CUDA only; a CPU run records why it was skipped)
  underflow  init gamma 1 / 0.1 / 0.01: exact-zero drift beside the underflow fraction
  rmnet      RMNet's identity BN in fp32 vs the fold-first conversion's reserved channels"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab import create_model, measure_drift, reparameterize
from repvgg_lab.models.drift import DriftReport
from repvgg_lab.models.init import bn_gamma, timm_like
from repvgg_lab.reparam import rel_max
from repvgg_lab.studies.common import cell, images, render_table, table
from repvgg_lab.testing import trained_like
from repvgg_lab.utils import exact_fp32, tf32

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """What every case is measured on."""

    model: str = "repvgg_b2g4"
    size: int = 224
    batch: int = 2
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "cpu"

    def images(self, seed: int = 0) -> Tensor:
        """The case's input batch."""
        return images(self.batch, self.size, seed, self.device)


CASES: dict[str, Callable[[Settings], dict[str, Any]]] = {}


def case(fn: Callable[[Settings], dict[str, Any]]) -> Callable[[Settings], dict[str, Any]]:
    """Register a case under its name without the `case_` prefix."""
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


def build(name: str, s: Settings, init: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """A 1000-class net drawn under `s.seed`, then `init`, in eval mode on `s.device`."""
    torch.manual_seed(s.seed)
    return init(create_model(name, num_classes=1000)).to(s.device).eval()


def l2(a: Tensor, b: Tensor) -> float:
    """Euclidean distance of two outputs (the user report's metric), in float64."""
    return float((a.double() - b.double()).pow(2).sum().sqrt())


def block_stats(report: DriftReport, key: str = "deploy_rel_max") -> list[float]:
    """[median, max] over blocks of one per-block comparison ([] without blocks)."""
    values = [v[key] for v in report.blocks.values()]
    return [statistics.median(values), max(values)] if values else []


def features(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled features (the classifier's input) of our RepVGG or of timm's."""
    pool = getattr(model, "forward_head", None) or model.head
    return pool(model.forward_features(x), pre_logits=True)


REPORT_COLUMNS = [
    ("BN weight / bias", "s"),
    ("max abs logit (fp64)", "e"),
    ("input dependence", "e"),
    ("user metric L2(y32 - yd32)", "e"),
    ("drift max_abs", "e"),
    ("drift rel_max", "e"),
    ("train32 vs fp64", "e"),
    ("deploy32 vs fp64", "e"),
    ("underflow", "e"),
    ("per-block plain vs fp64 (median / max)", "pair"),
]


@case
def case_report(s: Settings) -> dict[str, Any]:
    """The user report (seed 003): BN 1/0 vs 0.01/0.01 on a kaiming fan_out B2g4."""
    x, rows = s.images(), []
    for gamma, beta in ((1.0, 0.0), (0.01, 0.01)):
        init = kaiming_bn_init(gamma, beta, s.seed)
        net = build("repvgg_b2g4", s, init)
        plain = reparameterize(net)
        report = measure_drift(net, plain, x)
        with torch.no_grad():
            y32, yd32 = net(x), plain(x)
            y64 = copy.deepcopy(net).double()(x.double())
        # How much the logits change between images relative to their size (~0: constant).
        spread = float((y64 - y64.mean(0)).abs().max() / y64.abs().max())
        rows.append(
            [f"{gamma:g} / {beta:g}", float(y64.abs().max()), spread, l2(y32, yd32)]
            + [report.max_abs, report.rel_max, report.train_rel_max, report.deploy_rel_max]
            + [report.underflow_frac, block_stats(report)]
        )
    title = f"repvgg_b2g4, {s.size}x{s.size}, batch {s.batch}, kaiming fan_out convs"
    return {"title": title, **table(REPORT_COLUMNS, rows), "notes": []}


def kaiming_bn_init(gamma: float, beta: float, seed: int) -> Callable[[nn.Module], nn.Module]:
    """timm's kaiming fan_out init, then every BN at weight `gamma`, bias `beta`."""
    return lambda m: bn_gamma(timm_like(m, seed=seed), gamma, beta)


def _timm_fp32_fused(net: nn.Module, name: str) -> nn.Module:
    """timm's model with our weights (same key names), converted by timm in fp32."""
    import timm
    from timm.utils.model import reparameterize_model

    twin = timm.create_model(name, num_classes=1000).to(net.head.fc.weight.device)
    twin.load_state_dict(net.state_dict(), strict=True)
    return reparameterize_model(twin.eval(), inplace=False).eval()


def _kernel_errors(net: nn.Module, theirs: nn.Module, ours: nn.Module) -> list[list[float]]:
    """Per block: fused kernel of timm (fp32) and ours vs the exact float64 fusion."""
    theirs_blocks, ours_blocks = dict(theirs.named_modules()), dict(ours.named_modules())
    errors = []
    for name, block in net.named_modules():
        if hasattr(block, "get_equivalent_kernel_bias") and name in theirs_blocks:
            with torch.no_grad():
                k64, _ = block.get_equivalent_kernel_bias(dtype=torch.float64)
            k32 = theirs_blocks[name].reparam_conv.weight.detach()
            errors.append(
                [rel_max(k64, k32), rel_max(k64, ours_blocks[name].reparam_conv.weight.detach())]
            )
    return errors


FUSION_COLUMNS = [
    ("seed", "s"),
    ("output", "s"),
    ("train32 vs fp64", "e"),
    ("fp32-fused deploy32 vs fp64 (timm)", "e"),
    ("fp64-fused deploy32 vs fp64 (ours)", "e"),
    ("ratio timm / ours", "x"),
    ("drift train32 vs deploy32 (timm)", "e"),
    ("drift train32 vs deploy32 (ours)", "e"),
]


@case
def case_fusion(s: Settings) -> dict[str, Any]:
    """fp64-fused (ours) vs fp32-fused (timm / official) deploy nets against the fp64 truth."""
    rows, kernel_errors = [], []
    for seed in s.seeds:
        net = trained_like(s.model, seed, num_classes=1000).to(s.device)
        ours, theirs = reparameterize(net).eval(), _timm_fp32_fused(net, s.model)
        truth, x = copy.deepcopy(net).double(), s.images(seed)
        with torch.no_grad(), exact_fp32():
            outs = {
                "logits": (truth(x.double()), net(x), theirs(x), ours(x)),
                "pooled features": tuple(
                    features(m, x.double() if m is truth else x) for m in (truth, net, theirs, ours)
                ),
            }
        for label, (y64, y32, yt, yo) in outs.items():
            a, b, c = rel_max(y64, y32), rel_max(y64, yt), rel_max(y64, yo)
            rows.append([str(seed), label, a, b, c, b / c, rel_max(y32, yt), rel_max(y32, yo)])
        kernel_errors += _kernel_errors(net, theirs, ours)
    worst = "fused kernels vs the exact float64 fusion, max over blocks and seeds"
    notes = [
        [f"{worst}: fp32 fusion (timm)", max(e[0] for e in kernel_errors), "e"],
        [f"{worst}: float64 fusion rounded once (ours)", max(e[1] for e in kernel_errors), "e"],
        ["fp32 half-ulp 2^-24", 2.0**-24, "e"],
    ]
    title = (
        f"{s.model}, trained-like BN, {s.size}x{s.size}, batch {s.batch}; "
        "relative to the fp64 multi-branch net"
    )
    return {"title": title, **table(FUSION_COLUMNS, rows), "notes": notes}


BF16_COLUMNS = [
    ("dtype", "s"),
    ("drift rel_max", "e"),
    ("train vs fp64", "e"),
    ("deploy vs fp64", "e"),
    ("top-1 agree", "f3"),
    ("per-block plain vs fp64 (median / max)", "pair"),
    ("machine epsilon", "e"),
]


def _drift_row(report: DriftReport) -> list[Any]:
    """drift rel_max, train/deploy vs fp64, top-1 agreement and per-block median / max."""
    return [report.rel_max, report.train_rel_max, report.deploy_rel_max, report.top1_agree] + [
        block_stats(report)
    ]


@case
def case_bf16(s: Settings) -> dict[str, Any]:
    """Conversion in bfloat16 vs float32: drift against the fp64 truth of the same weights."""
    net, x, rows = trained_like(s.model, s.seed, num_classes=1000).to(s.device), s.images(), []
    for dtype in (torch.float32, torch.bfloat16):
        source = copy.deepcopy(net).to(dtype).eval()
        report = measure_drift(source, reparameterize(source), x)
        rows.append([report.dtype, *_drift_row(report), torch.finfo(dtype).eps])
    title = f"{s.model}, trained-like BN, {s.size}x{s.size}, batch {s.batch}"
    return {"title": title, **table(BF16_COLUMNS, rows), "notes": []}


@case
def case_tf32(s: Settings) -> dict[str, Any]:
    """fp32 with TF32 on vs off (cuDNN convs and matmuls) on a CUDA device."""
    if torch.device(s.device).type != "cuda":
        reason = "TF32 exists only on CUDA (Ampere or newer); this run had no CUDA device"
        return {"title": "TF32", "skipped": reason}
    net = trained_like(s.model, s.seed, num_classes=1000).to(s.device)
    plain, x, rows = reparameterize(net), s.images(), []
    for enabled in (False, True):
        with tf32(enabled):
            report = measure_drift(net, plain, x, allow_tf32=enabled)
        rows.append(["on" if enabled else "off", *_drift_row(report)])
    columns = [("TF32", "s"), *BF16_COLUMNS[1:6]]
    title = f"{torch.cuda.get_device_name()}: {s.model}, {s.size}x{s.size}, batch {s.batch}"
    return {"title": title, **table(columns, rows), "notes": []}


UNDERFLOW_COLUMNS = [
    ("gamma", "s"),
    ("max abs pooled feature (fp64)", "e"),
    ("max abs pooled feature (fp32)", "e"),
    ("logits == fc bias", "s"),
    ("drift rel_max", "e"),
    ("deploy32 vs fp64", "e"),
    ("underflow_frac", "e"),
    ("per-block plain vs fp64 (median / max)", "pair"),
]


@case
def case_underflow(s: Settings) -> dict[str, Any]:
    """Small init gamma: the end-to-end signal vanishes, drift reads 0, per block it does not."""
    x, rows = s.images(), []
    for gamma in (1.0, 0.1, 0.01):
        net = build(s.model, s, lambda m, g=gamma: bn_gamma(m, g, 0.0))
        report = measure_drift(net, reparameterize(net), x)
        with torch.no_grad():
            f64 = features(copy.deepcopy(net).double(), x.double())
            f32, logits = features(net, x), net(x)
        bias_only = torch.equal(logits, net.head.fc.bias.expand_as(logits))
        rows.append(
            [f"{gamma:g}", float(f64.abs().max()), float(f32.abs().max()), str(bias_only)]
            + [report.rel_max, report.deploy_rel_max, report.underflow_frac, block_stats(report)]
        )
    title = f"{s.model}, PyTorch default convs, every BN weight gamma / bias 0, {s.size}x{s.size}"
    return {"title": title, **table(UNDERFLOW_COLUMNS, rows), "notes": []}


RMNET_COLUMNS = [
    ("conversion", "s"),
    ("elements changed", "pct"),
    ("max abs error", "e"),
    ("max error / (eps * max(abs x, abs mean))", "ulp"),
    ("zero inputs turned non-zero", "s"),
    ("largest such value", "e"),
]


def _identity_bn(s: Tensor) -> Tensor:
    """RMNet's BN-kept identity on `s`: a BN holding s's own statistics with weight
    sqrt(var+eps) and bias mean, i.e. x in exact arithmetic, evaluated in s's dtype."""
    keep = nn.BatchNorm2d(s.shape[1]).to(s.device)
    keep.train()
    keep.momentum = None
    keep(s)
    keep.eval()
    keep.weight.copy_((keep.running_var + keep.eps).sqrt())
    keep.bias.copy_(keep.running_mean)
    return keep(s), keep.running_mean


def _residue_row(label: str, out: Tensor, s: Tensor, mean: Tensor) -> list[Any]:
    """How far `out` is from `s`: share changed, max error, in ulps, zeros turned non-zero."""
    zeros, changed = s == 0, out != s
    diff = (out.double() - s.double()).abs()
    scale = torch.maximum(s.abs(), mean.abs().view(1, -1, 1, 1)).double()
    ulps = float((diff / scale).max() / torch.finfo(torch.float32).eps)
    largest = float(out[zeros].abs().max()) if bool(zeros.any()) else 0.0
    turned = f"{int((changed & zeros).sum())} of {int(zeros.sum())}"
    return [label, float(changed.double().mean()), float(diff.max()), ulps, turned, largest]


@case
def case_rmnet(s: Settings) -> dict[str, Any]:
    """RMNet's BN-kept identity vs the fold-first conversion on the reserved channels."""
    x = s.images()
    net = trained_like("rmnet_resnet18", s.seed, inputs=x.cpu(), num_classes=1000).to(s.device)
    plain = reparameterize(net).eval()
    with torch.no_grad():
        # The first residual block's input: stem conv -> BN -> ReLU -> max-pool (x >= 0).
        inp = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        kept, mean = _identity_bn(inp)
        # The fold-first plain net: its first body layer outputs [x; conv1(x)].
        reserved = plain.features[1].conv(inp)[:, : inp.shape[1]]
    rows = [
        _residue_row("BN kept: (x - mean)/sqrt(var+eps)*sqrt(var+eps) + mean", kept, inp, mean),
        _residue_row("fold first (ours): Dirac conv, bias 0", reserved, inp, mean),
    ]
    report = measure_drift(net, plain, x)
    notes = [
        [
            "reserved channels bit-exact (torch.equal) in the fold-first net",
            str(torch.equal(reserved, inp)),
            "s",
        ],
        ["whole net, fold-first plain vs fp64", report.deploy_rel_max, "e"],
        ["whole net, multi-branch fp32 vs fp64", report.train_rel_max, "e"],
    ]
    title = f"rmnet_resnet18 first block input, batch {s.batch}, fp32"
    return {"title": title, **table(RMNET_COLUMNS, rows), "notes": notes}


def run(names: list[str], settings: Settings) -> dict[str, Any]:
    """Every named case (all when empty), in order, with its wall time."""
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    out: dict[str, Any] = {"settings": asdict(settings), "cases": {}}
    for name in names or list(CASES):
        start = time.perf_counter()
        out["cases"][name] = {**CASES[name](settings), "seconds": time.perf_counter() - start}
        log.info("%s: %.0f s", name, out["cases"][name]["seconds"])
    return out


def render_case(name: str) -> Callable[[dict[str, Any]], str]:
    """The renderer of one case's doc block: its title, table and notes."""

    def render(record: dict[str, Any]) -> str:
        """The block of this case."""
        result = record["results"]["cases"].get(name)
        if result is None:
            return f"Case `{name}` not measured in this results file."
        if "skipped" in result:
            return f"{result['title']}: not measured ({result['skipped']})."
        notes = [f"- {label}: {cell(value, fmt)}" for label, value, fmt in result["notes"]]
        lines = [f"{result['title']}:", "", *render_table(result)]
        return "\n".join(lines + ([""] + notes if notes else []))

    return render
