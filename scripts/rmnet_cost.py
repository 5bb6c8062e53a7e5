"""What the RM conversion costs: parameters, MACs and CPU latency of the plain nets.

For each RMNet model it compares four forms of the same function:
  source   the training-form net (BN unfolded, residual adds),
  bnfold   every BN folded into its conv, residual adds kept (the fair baseline: a deployed
           residual net has no BN either),
  plain    `repvgg_lab.reparameterize` (grouped bottleneck 3x3; MobileNetV2 without merging),
  rmnet    RMNet's layout, built by our converter: dense bottleneck 3x3 (ResNet-50) or merged
           1x1 pairs (MobileNetV2's "V1" form); same as `plain` for ResNet-18/34.
Counts use `repvgg_lab.models.count_params` / `count_macs` (one 224x224 image, MACs).
Latency: fp32, `torch.inference_mode`, the forms of one model timed interleaved (each round runs
every form once) after warm-up runs; the median per form is reported with the machine's load
average, because on a shared machine only ratios measured side by side mean anything.

    python scripts/rmnet_cost.py                       # counts + latency, b=1 and b=8, 2 threads
    python scripts/rmnet_cost.py --no-latency          # counts only (seconds)
    python scripts/rmnet_cost.py --no-latency --drift  # + conversion error, 3 seeds (minutes)
    python scripts/rmnet_cost.py --json outputs/rmnet_cost.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from torch import nn

from repvgg_lab import create_model, measure_drift, reparameterize
from repvgg_lab.models.plain import ChannelClamp
from repvgg_lab.reparam import BNStats, fuse_conv_bn, rel_max
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import count_macs, count_params

MODELS = ["rmnet_resnet18", "rmnet_resnet34", "rmnet_resnet50", "rmnet_mobilenet_v2"]
RMNET_FORM = {
    "rmnet_resnet50": {"grouped_bottleneck": False},
    "rmnet_mobilenet_v2": {"merge_pointwise": True},
}


def fold_bn_keep_residual(model: nn.Module) -> nn.Module:
    """A copy with every BN folded into the conv registered just before it (torchvision's
    ResNet/MobileNetV2 register each conv right before its BN); residual adds are kept."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
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
                parent._modules[a], parent._modules[b] = fused, nn.Identity()
    return model


def conv_params(model: nn.Module) -> int:
    """Parameters of the convolutions alone (weights and biases)."""
    return sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    )


def forms(
    name: str, device: torch.device | str, with_rmnet_form: bool = True
) -> dict[str, nn.Module]:
    """The compared forms of one model, built on `device` (meta: shapes only)."""
    with torch.device(device):
        source = create_model(name).eval()
    if str(device) != "meta":
        randomize_bn(source, 0, inputs=torch.randn(2, 3, 224, 224))
    out = {
        "source": source,
        "bnfold": fold_bn_keep_residual(source),
        "plain": reparameterize(source),
    }
    if with_rmnet_form and name in RMNET_FORM:
        out["rmnet"] = source.to_plain(**RMNET_FORM[name])
    return out


def costs(name: str, size: int) -> dict[str, dict[str, int]]:
    """Parameter/MAC/conv counts of every form, computed on the meta device (no arithmetic)."""
    result = {}
    for form, model in forms(name, "meta").items():
        result[form] = {
            "params": count_params(model),
            "conv_params": conv_params(model),
            "macs": count_macs(model, size),
            "convs": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
        }
    return result


def drift(name: str, size: int, seed: int) -> dict[str, float]:
    """Conversion error on a trained-like net (BN statistics calibrated on random images):
    float64 plain vs source, and fp32 source/plain vs the float64 truth (`measure_drift`)."""
    torch.manual_seed(seed)
    source = create_model(name).eval()
    randomize_bn(source, seed, inputs=torch.randn(4, 3, size, size))
    x = torch.randn(4, 3, size, size)
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
        if any(isinstance(m, ChannelClamp) for m in plain64.modules()):
            # RMNet's PReLU form = our clamps without the cap at 6 on the ReLU6 channels.
            for m in plain64.modules():
                if isinstance(m, ChannelClamp):
                    m.upper.fill_(float("inf"))
            out["uncapped_fp64_rel_max"] = rel_max(y64, plain64(x.double()))
    return out


def latency(
    models: dict[str, nn.Module], batch: int, size: int, runs: int, warmup: int
) -> dict[str, float]:
    """Median milliseconds per forward of each model, timed interleaved."""
    x = torch.randn(batch, 3, size, size)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for key, model in models.items():
                start = time.perf_counter()
                model(x)
                if i >= warmup:
                    times[key].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--drift", action="store_true", help="also measure conversion error")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rmnet-form-latency",
        action="store_true",
        help="also time RMNet's layout (ResNet-50 dense: ~1 GB, ~0.5 s a run)",
    )
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {
        "size": args.size,
        "threads": args.threads,
        "torch": torch.__version__,
        "models": {},
    }

    print(f"## Cost at {args.size}x{args.size} (ratios vs bnfold, the BN-folded residual net)\n")
    print(
        "| model | form | params | conv params | MACs | convs | params x | conv params x | MACs x |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        c = costs(name, args.size)
        report["models"][name] = {"cost": c}
        base = c["bnfold"]
        for form, v in c.items():
            print(
                f"| {name} | {form} | {v['params'] / 1e6:.2f} M | {v['conv_params'] / 1e6:.2f} M | "
                f"{v['macs'] / 1e9:.3f} G | {v['convs']} | {v['params'] / base['params']:.2f} | "
                f"{v['conv_params'] / base['conv_params']:.2f} | {v['macs'] / base['macs']:.2f} |"
            )
    if args.drift:
        print(f"\n## Conversion error at {args.size}x{args.size}, batch 4, worst over seeds\n")
        print(
            "| model | fp64 plain vs source | fp32 source vs fp64 | fp32 plain vs fp64 | "
            "plain/source | PReLU-style (no cap), fp64 |"
        )
        print("|---|---|---|---|---|---|")
        for name in args.models:
            runs = [drift(name, args.size, seed) for seed in args.seeds]
            report["models"][name]["drift"] = runs
            worst = {k: max(r[k] for r in runs) for k in runs[0]}
            ratio = max(r["fp32_deploy_rel_max"] / r["fp32_train_rel_max"] for r in runs)
            uncapped = worst.get("uncapped_fp64_rel_max")
            print(
                f"| {name} | {worst['fp64_rel_max']:.1e} | {worst['fp32_train_rel_max']:.1e} | "
                f"{worst['fp32_deploy_rel_max']:.1e} | {ratio:.2f} | "
                f"{'-' if uncapped is None else f'{uncapped:.2f}'} |"
            )
    if args.no_latency:
        return _write(args.json, report)

    print(f"\n## CPU latency, fp32, {args.threads} threads, median of {args.runs} (interleaved)\n")
    print("| model | batch | form | ms | x bnfold | load avg before/after |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        models = forms(name, "cpu", with_rmnet_form=args.rmnet_form_latency)
        report["models"][name]["latency_ms"] = {}
        for batch in args.batch:
            load0 = os.getloadavg()[0]
            ms = latency(models, batch, args.size, args.runs, args.warmup)
            load1 = os.getloadavg()[0]
            report["models"][name]["latency_ms"][str(batch)] = {**ms, "load": [load0, load1]}
            for form, t in ms.items():
                print(
                    f"| {name} | {batch} | {form} | {t:.1f} | {t / ms['bnfold']:.2f} | "
                    f"{load0:.1f} / {load1:.1f} |"
                )
        del models
    _write(args.json, report)


def _write(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
