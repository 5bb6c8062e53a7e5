"""How much accuracy each pruning criterion keeps before any fine-tuning, on the digits data.

Prunes a plain net to each MAC target with each channel score, without and with recalibration
on fixed training images, and measures the test and validation accuracy of each pruned net,
untouched by fine-tuning. The only call into the pruning API is `prune_to_target`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.deploy import load_source
from repvgg_lab.lit.evaluate import evaluate
from repvgg_lab.prune import prune_net
from repvgg_lab.studies.common import render_table, table

log = logging.getLogger(__name__)

# (label, score, normalize, recalibrated)
CRITERIA = [
    ("l2", "l2", False, False),
    ("l2 + recalibration", "l2", False, True),
    ("l2_next, normalized", "l2_next", True, False),
    ("l2_next, normalized + recalibration", "l2_next", True, True),
]


def prune_to_target(
    net: nn.Module,
    size: int,
    target: float,
    score: str,
    normalize: bool,
    batches: list[Tensor] | None,
) -> tuple[nn.Module, float, bool]:
    """`net` pruned to remove `target` of its MACs: (pruned net, MAC cut, recalibrated)."""
    pruned, info = prune_net(
        net, size, macs_reduction=target, score=score, normalize=normalize, batches=batches
    )
    cut = 1 - info["prune/macs_after"] / info["prune/macs_before"]
    return pruned, cut, bool(info["recalibrated"])


def run(
    plain: Path, targets: list[float], calibration_batches: int = 16, batch_size: int = 32
) -> dict[str, Any]:
    """Rows (criterion, target, MAC cut, recalibrated, test and val accuracy) for every
    criterion at every target, after an `unpruned` row."""
    src = load_source(plain)
    net = src.plain.eval()
    size = src.input_size or 32
    dm = DigitsDataModule(img_size=size, batch_size=batch_size, in_channels=src.in_channels)
    dm.setup()
    images, _ = dm.fixed_batch("train", calibration_batches * batch_size)

    def accuracy(model: torch.nn.Module) -> list[float]:
        """Test and validation accuracy."""
        return [
            evaluate(model, dm.test_dataloader())["acc"],
            evaluate(model, dm.val_dataloader())["acc"],
        ]

    rows = [{"criterion": "unpruned", "target": 0.0, "macs_cut": 0.0, "acc": accuracy(net)}]
    for target in targets:
        for label, score, normalize, calibrated in CRITERIA:
            batches = list(images.split(batch_size)) if calibrated else None
            pruned, cut, recalibrated = prune_to_target(
                net, size, target, score, normalize, batches
            )
            rows.append(
                {
                    "criterion": label,
                    "target": target,
                    "macs_cut": cut,
                    "recalibrated": recalibrated,
                    "acc": accuracy(pruned),
                }
            )
            log.info("%s at %g: %s", label, target, rows[-1]["acc"])
    return {"plain": str(plain), "size": size, "calibration_images": len(images), "rows": rows}


def render(record: dict[str, Any]) -> str:
    """Doc block: the accuracy of every criterion at every target, no fine-tuning."""
    res = record["results"]
    note = (
        f"`{res['plain']}`, {res['size']}×{res['size']}, calibration: "
        f"{res['calibration_images']} training images; no fine-tuning."
    )
    rows = [
        [r["criterion"], 100 * r["macs_cut"], *(100 * a for a in r["acc"])] for r in res["rows"]
    ]
    columns = [("criterion", "s"), ("MAC cut (%)", "f1"), ("test acc", "f1"), ("val acc", "f1")]
    return "\n".join([note, "", *render_table(table(columns, rows))])
