"""Measure the precision facts behind docs/precision.md with the library's own tools.

Cases (default: all, in this order):
  report     the user report: RepVGG-B2g4 at 224x224, kaiming (fan_out) convs, every BN at
             weight 1 / bias 0 vs weight 0.01 / bias 0.01; the user's metric ||y32 - yd32||_2
             next to relative drift, drift against float64 and the logits' dependence on the input
  fusion     fp64 vs fp32 fusion against the float64 truth: our converter (float64 fusion,
             rounded once) vs timm's `reparameterize_model` (fp32 fusion, numerically the
             official converter's), trained-like BN, logits and pooled features
  bf16       the same net converted and evaluated in bfloat16
  tf32       fp32 with TF32 on vs off (CUDA only; says so and exits the case on a CPU)
  underflow  init gamma 0.1 / 0.01 (beta 0): end-to-end drift of exactly 0 next to the underflow
             fraction and the per-block drift
  rmnet      RMNet's identity BN (x - mean)/sqrt(var+eps)*sqrt(var+eps) + mean in fp32 vs the
             fold-first conversion's bit-exact copy of the reserved channels

    python scripts/drift_probe.py                      # everything, CPU, 1 thread (minutes)
    python scripts/drift_probe.py report fusion --batch 4
    python scripts/drift_probe.py tf32 --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from repvgg_lab import create_model, measure_drift, reparameterize
from repvgg_lab.models.init import bn_gamma, timm_like
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import tf32

CASES: dict[str, Callable[[argparse.Namespace], None]] = {}


def case(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


def images(args: argparse.Namespace, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(args.device)


def build(name: str, args: argparse.Namespace, init: Callable[[nn.Module], nn.Module]) -> nn.Module:
    torch.manual_seed(args.seed)
    return init(create_model(name, num_classes=1000)).to(args.device).eval()


def l2(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).sum().sqrt())


def block_stats(report, key: str = "deploy_rel_max") -> str:
    values = [v[key] for v in report.blocks.values()]
    if not values:
        return "-"
    return f"{statistics.median(values):.1e} / {max(values):.1e}"


def header(title: str, columns: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def row(cells: list[object]) -> None:
    print("| " + " | ".join(c if isinstance(c, str) else f"{c:.2e}" for c in cells) + " |")


@case
def case_report(args: argparse.Namespace) -> None:
    """The user report (seed 003): BN 1/0 vs 0.01/0.01 on a kaiming fan_out B2g4."""
    header(
        f"User report: repvgg_b2g4, {args.size}x{args.size}, batch {args.batch}, "
        "kaiming fan_out convs",
        [
            "BN weight / bias",
            "max abs logit (fp64)",
            "input dependence",
            "user metric L2(y32 - yd32)",
            "drift max_abs",
            "drift rel_max",
            "train32 vs fp64",
            "deploy32 vs fp64",
            "underflow",
            "per-block plain vs fp64 (median / max)",
        ],
    )
    x = images(args)
    for gamma, beta in ((1.0, 0.0), (0.01, 0.01)):
        net = build(
            "repvgg_b2g4",
            args,
            lambda m, g=gamma, b=beta: bn_gamma(timm_like(m, seed=args.seed), g, b),
        )
        plain = reparameterize(net)
        report = measure_drift(net, plain, x)
        with torch.no_grad():
            y32, yd32 = net(x), plain(x)
            y64 = copy.deepcopy(net).double()(x.double())
        # How much the logits change between images, relative to their size: ~0 means the net
        # outputs a constant, whatever the input.
        spread = float((y64 - y64.mean(0)).abs().max() / y64.abs().max())
        row(
            [
                f"{gamma:g} / {beta:g}",
                float(y64.abs().max()),
                spread,
                l2(y32, yd32),
                report.max_abs,
                report.rel_max,
                report.train_rel_max,
                report.deploy_rel_max,
                report.underflow_frac,
                block_stats(report),
            ]
        )


def _timm_fp32_fused(net: nn.Module, name: str) -> nn.Module:
    """timm's model with our weights (same key names), converted by timm in fp32."""
    import timm
    from timm.utils.model import reparameterize_model

    twin = timm.create_model(name, num_classes=1000).to(net.head.fc.weight.device)
    twin.load_state_dict(net.state_dict(), strict=True)
    return reparameterize_model(twin.eval(), inplace=False).eval()


def _features(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled features (the classifier's input) of our RepVGG or of timm's."""
    pool = getattr(model, "forward_head", None) or model.head
    return pool(model.forward_features(x), pre_logits=True)


@case
def case_fusion(args: argparse.Namespace) -> None:
    """fp64-fused (ours) vs fp32-fused (timm / official) deploy nets against the fp64 truth."""
    name = args.model
    header(
        f"fp64 vs fp32 fusion: {name}, trained-like BN, {args.size}x{args.size}, "
        f"batch {args.batch}; relative to the fp64 multi-branch net",
        [
            "seed",
            "output",
            "train32 vs fp64",
            "fp32-fused deploy32 vs fp64 (timm)",
            "fp64-fused deploy32 vs fp64 (ours)",
            "ratio timm / ours",
            "drift train32 vs deploy32 (timm)",
            "drift train32 vs deploy32 (ours)",
        ],
    )
    kernel_errors = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        net = randomize_bn(create_model(name, num_classes=1000), seed=seed).to(args.device).eval()
        ours = reparameterize(net).eval()
        theirs = _timm_fp32_fused(net, name)
        truth = copy.deepcopy(net).double()
        x = images(args, seed)
        with torch.no_grad(), tf32(False):
            outs = {
                "logits": (truth(x.double()), net(x), theirs(x), ours(x)),
                "pooled features": (
                    _features(truth, x.double()),
                    _features(net, x),
                    _features(theirs, x),
                    _features(ours, x),
                ),
            }
        for label, (y64, y32, yt, yo) in outs.items():
            a, b, c = rel_max(y64, y32), rel_max(y64, yt), rel_max(y64, yo)
            row([str(seed), label, a, b, c, f"{b / c:.2f}x", rel_max(y32, yt), rel_max(y32, yo)])
        # Fused kernels: fp32 fusion vs the exact (float64) fusion, per block.
        theirs_blocks = dict(theirs.named_modules())
        ours_blocks = dict(ours.named_modules())
        for block_name, block in net.named_modules():
            if hasattr(block, "get_equivalent_kernel_bias") and block_name in theirs_blocks:
                with torch.no_grad():
                    k64, _ = block.get_equivalent_kernel_bias(dtype=torch.float64)
                k32 = theirs_blocks[block_name].reparam_conv.weight.detach()
                ko = ours_blocks[block_name].reparam_conv.weight.detach()
                kernel_errors.append((rel_max(k64, k32), rel_max(k64, ko)))
    print(
        "\nfused kernels vs the exact float64 fusion, max over blocks and seeds: "
        f"fp32 fusion (timm) {max(e[0] for e in kernel_errors):.2e}, "
        f"float64 fusion rounded once (ours) {max(e[1] for e in kernel_errors):.2e} "
        f"(fp32 half-ulp 2^-24 = {2.0**-24:.2e})"
    )


@case
def case_bf16(args: argparse.Namespace) -> None:
    """Conversion in bfloat16 vs float32: drift against the fp64 truth of the same weights."""
    name = args.model
    header(
        f"bfloat16 vs float32: {name}, trained-like BN, {args.size}x{args.size}, "
        f"batch {args.batch}",
        [
            "dtype",
            "drift rel_max",
            "train vs fp64",
            "deploy vs fp64",
            "top-1 agree",
            "per-block plain vs fp64 (median / max)",
            "machine epsilon",
        ],
    )
    torch.manual_seed(args.seed)
    net = randomize_bn(create_model(name, num_classes=1000), seed=args.seed).to(args.device)
    x = images(args)
    for dtype in (torch.float32, torch.bfloat16):
        source = copy.deepcopy(net).to(dtype).eval()
        report = measure_drift(source, reparameterize(source), x)
        row(
            [
                report.dtype,
                report.rel_max,
                report.train_rel_max,
                report.deploy_rel_max,
                f"{report.top1_agree:.3f}",
                block_stats(report),
                torch.finfo(dtype).eps,
            ]
        )


@case
def case_tf32(args: argparse.Namespace) -> None:
    """fp32 with TF32 on vs off (cuDNN convs and matmuls) on a CUDA device."""
    if torch.device(args.device).type != "cuda":
        print(
            "\n## TF32\n\nnot measured: TF32 exists only on CUDA (Ampere or newer). On a GPU "
            "machine run\n\n    python scripts/drift_probe.py tf32 --device cuda\n"
        )
        return
    name = args.model
    header(
        f"TF32 on {torch.cuda.get_device_name()}: {name}, trained-like BN, "
        f"{args.size}x{args.size}, batch {args.batch}",
        ["TF32", "drift rel_max", "train vs fp64", "deploy vs fp64", "top-1 agree", "per-block"],
    )
    torch.manual_seed(args.seed)
    net = randomize_bn(create_model(name, num_classes=1000), seed=args.seed).to(args.device)
    net = net.eval()
    plain = reparameterize(net)
    x = images(args)
    for enabled in (False, True):
        with tf32(enabled):
            report = measure_drift(net, plain, x, allow_tf32=enabled)
        row(
            [
                "on" if enabled else "off",
                report.rel_max,
                report.train_rel_max,
                report.deploy_rel_max,
                f"{report.top1_agree:.3f}",
                block_stats(report),
            ]
        )


@case
def case_underflow(args: argparse.Namespace) -> None:
    """Small init gamma: the end-to-end signal vanishes, drift reads 0, per block it does not."""
    name = args.model
    header(
        f"Underflow: {name}, PyTorch default convs, every BN weight gamma / bias 0, "
        f"{args.size}x{args.size}",
        [
            "gamma",
            "max abs pooled feature (fp64)",
            "max abs pooled feature (fp32)",
            "logits == fc bias",
            "drift rel_max",
            "deploy32 vs fp64",
            "underflow_frac",
            "per-block plain vs fp64 (median / max)",
        ],
    )
    x = images(args)
    for gamma in (1.0, 0.1, 0.01):
        net = build(name, args, lambda m, g=gamma: bn_gamma(m, g, 0.0))
        report = measure_drift(net, reparameterize(net), x)
        with torch.no_grad():
            f64 = _features(copy.deepcopy(net).double(), x.double())
            f32 = _features(net, x)
            logits = net(x)
        bias_only = torch.equal(logits, net.head.fc.bias.expand_as(logits))
        row(
            [
                f"{gamma:g}",
                float(f64.abs().max()),
                float(f32.abs().max()),
                str(bias_only),
                report.rel_max,
                report.deploy_rel_max,
                report.underflow_frac,
                block_stats(report),
            ]
        )


@case
def case_rmnet(args: argparse.Namespace) -> None:
    """RMNet's BN-kept identity vs the fold-first conversion on the reserved channels."""
    torch.manual_seed(args.seed)
    x = images(args)
    net = create_model("rmnet_resnet18", num_classes=1000)
    net = randomize_bn(net, seed=args.seed, inputs=x.cpu()).to(args.device).eval()
    plain = reparameterize(net).eval()
    with torch.no_grad():
        # The first residual block's input: stem conv -> BN -> ReLU -> max-pool (x >= 0).
        s = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        # RMNet's BN-keeping converter passes the reserved channels through a Dirac conv and a
        # BN holding the input's statistics with weight sqrt(var+eps), bias mean: x in exact
        # arithmetic. The statistics are s's own (a calibrated BN), as in a trained net.
        keep = nn.BatchNorm2d(s.shape[1]).to(args.device)
        keep.train()
        keep.momentum = None
        keep(s)
        keep.eval()
        keep.weight.copy_((keep.running_var + keep.eps).sqrt())
        keep.bias.copy_(keep.running_mean)
        kept = keep(s)
        # The fold-first plain net: its first body layer outputs [x; conv1(x)].
        reserved = plain.features[1].conv(s)[:, : s.shape[1]]
    zeros = s == 0
    diff = (kept.double() - s.double()).abs()
    ulp = torch.finfo(torch.float32).eps
    scale = torch.maximum(s.abs(), keep.running_mean.abs().view(1, -1, 1, 1)).double()
    print(f"\n## RMNet identity BN, rmnet_resnet18 first block input, batch {args.batch}, fp32\n")
    print(
        "| conversion | elements changed | max abs error "
        "| max error / (eps * max(abs x, abs mean)) | zero inputs turned non-zero "
        "| largest such value |"
    )
    print("|---|---|---|---|---|---|")
    changed = kept != s
    row(
        [
            "BN kept: (x - mean)/sqrt(var+eps)*sqrt(var+eps) + mean",
            f"{float(changed.double().mean()):.1%}",
            float(diff.max()),
            f"{float((diff / scale).max() / ulp):.2f} ulp",
            f"{int((changed & zeros).sum())} of {int(zeros.sum())}",
            float(kept[zeros].abs().max()) if bool(zeros.any()) else 0.0,
        ]
    )
    exact = torch.equal(reserved, s)
    changed = reserved != s
    row(
        [
            "fold first (ours): Dirac conv, bias 0",
            f"{float(changed.double().mean()):.1%}",
            float((reserved.double() - s.double()).abs().max()),
            "0.00 ulp",
            f"{int((changed & zeros).sum())} of {int(zeros.sum())}",
            float(reserved[zeros].abs().max()) if bool(zeros.any()) else 0.0,
        ]
    )
    print(f"\nreserved channels bit-exact (torch.equal) in the fold-first net: {exact}")
    report = measure_drift(net, plain, x)
    print(
        f"whole net, fold-first plain vs fp64: {report.deploy_rel_max:.2e} "
        f"(multi-branch fp32 vs fp64: {report.train_rel_max:.2e})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", metavar="case", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--model", default="repvgg_b2g4", help="fusion/bf16/tf32/underflow net")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fusion seeds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steady on a shared machine)"
    )
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s)")
    for name in args.cases or list(CASES):
        start = time.perf_counter()
        CASES[name](args)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
