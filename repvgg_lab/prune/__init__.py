"""Channel pruning of plain nets, in one place: options, the RepVGG-to-PlainNet view, the
pruning itself, recalibration on real images, and the sparsity gates trained before it.
The pure tensor math lives in `repvgg_lab.reparam.prune`."""

from repvgg_lab.prune.calibrate import recalibrate
from repvgg_lab.prune.channels import (
    channel_scores,
    prune_net,
    prune_plain,
    prune_summary,
    prune_to_macs,
)
from repvgg_lab.prune.gates import gate_parameters, shrink_gates_, sparsity_penalty
from repvgg_lab.prune.view import as_plain_net

__all__ = [
    "as_plain_net",
    "channel_scores",
    "gate_parameters",
    "prune_net",
    "prune_plain",
    "prune_summary",
    "prune_to_macs",
    "recalibrate",
    "shrink_gates_",
    "sparsity_penalty",
]
