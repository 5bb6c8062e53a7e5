"""How much accuracy each pruning criterion keeps before any fine-tuning, on the digits data.

    python train.py                                   # writes outputs/train/<run>/plain.safetensors
    PYTHONPATH=. python scripts/prune_scores.py outputs/train/<run>/plain.safetensors

Prunes the plain net to each MAC target with each channel score, without and with recalibration
on fixed training images (`prune.calibration_batches`, docs/pruning.md section 3a), and prints
the test and validation accuracy of each pruned net, untouched by fine-tuning, as a markdown
table (also written to --out as JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.deploy import load_source
from repvgg_lab.lit.evaluate import evaluate
from repvgg_lab.prune.channels import prune_net

# (label, score, normalize, recalibrated)
CRITERIA = [
    ("l2", "l2", False, False),
    ("l2 + recalibration", "l2", False, True),
    ("l2_next, normalized", "l2_next", True, False),
    ("l2_next, normalized + recalibration", "l2_next", True, True),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plain", type=Path, help="plain.safetensors of a digits run")
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--calibration-batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON results (optional)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    src = load_source(args.plain)
    net = src.plain.eval()
    size = src.input_size or 32
    dm = DigitsDataModule(img_size=size, batch_size=args.batch_size, in_channels=src.in_channels)
    dm.setup()
    images, _ = dm.fixed_batch("train", args.calibration_batches * args.batch_size)

    def accuracy(model: torch.nn.Module) -> tuple[float, float]:
        test = evaluate(model, dm.test_dataloader())["acc"]
        return test, evaluate(model, dm.val_dataloader())["acc"]

    rows = [{"criterion": "unpruned", "target": 0.0, "macs_cut": 0.0, "acc": accuracy(net)}]
    for target in args.targets:
        for label, score, normalize, calibrated in CRITERIA:
            pruned, info = prune_net(
                net,
                size,
                macs_reduction=target,
                score=score,
                normalize=normalize,
                batches=images.split(args.batch_size) if calibrated else None,
            )
            cut = 1 - info["prune/macs_after"] / info["prune/macs_before"]
            rows.append(
                {
                    "criterion": label,
                    "target": target,
                    "macs_cut": cut,
                    "recalibrated": info["recalibrated"],
                    "acc": accuracy(pruned),
                }
            )
    lines = [
        f"`{args.plain}`, {size}×{size}, calibration: {len(images)} training images; "
        "no fine-tuning.",
        "",
        "| criterion | MAC cut | test acc | val acc |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["criterion"],
            f"{100 * r['macs_cut']:.1f} %",
            *(f"{100 * a:.1f}" for a in r["acc"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
