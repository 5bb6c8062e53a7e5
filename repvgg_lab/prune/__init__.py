"""Channel pruning of plain nets, in one place: options (`PruneOptions`), the RepVGG-to-PlainNet
view, plans and the pruning itself, recalibration on real images, the measured result
(`prune_and_measure`), and the sparsity gates trained before it.
The pure tensor math lives in `repvgg_lab.reparam.prune`."""

from repvgg_lab.prune.calibrate import recalibrate
from repvgg_lab.prune.channels import (
    prune_channels,
    prune_plain,
    prune_summary,
    prune_to_macs,
)
from repvgg_lab.prune.gates import gate_parameters, shrink_gates_, sparsity_penalty
from repvgg_lab.prune.measure import PruneResult, prune_and_measure, prune_latency, prune_net
from repvgg_lab.prune.options import PruneOptions
from repvgg_lab.prune.plan import channel_scores
from repvgg_lab.prune.view import as_plain_net, check_prunable

__all__ = [
    "PruneOptions",
    "PruneResult",
    "as_plain_net",
    "channel_scores",
    "check_prunable",
    "gate_parameters",
    "prune_and_measure",
    "prune_channels",
    "prune_latency",
    "prune_net",
    "prune_plain",
    "prune_summary",
    "prune_to_macs",
    "recalibrate",
    "shrink_gates_",
    "sparsity_penalty",
]
