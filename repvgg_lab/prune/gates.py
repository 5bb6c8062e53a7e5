"""Per-channel gates for sparsity training: the penalty and the proximal shrink step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from repvgg_lab.errors import InputError


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every per-channel gate (`module.gate` parameters, e.g. RepVGGBlock(gate=True)) in `model`."""
    return [m.gate for m in model.modules() if isinstance(getattr(m, "gate", None), nn.Parameter)]


def sparsity_penalty(model: nn.Module) -> Tensor:
    """L1 norm of all channel gates (sum of |g|); the loss gets `lam * sparsity_penalty(model)`."""
    gates = gate_parameters(model)
    if not gates:
        raise InputError(
            f"{type(model).__name__} has no channel gates; build it with gate=True "
            "(e.g. create_model(name, gate=True)) to train with a sparsity penalty"
        )
    return torch.stack([g.abs().sum() for g in gates]).sum()


def shrink_gates_(model: nn.Module, amount: float) -> int:
    """Proximal L1 step after an optimizer step: g <- sign(g) * max(|g| - amount, 0) (use
    amount = lr * lam). Unlike the penalty's gradient it sets gates exactly to 0, which makes
    those channels exactly dead; returns how many gates are now 0."""
    if amount < 0:
        raise ValueError(f"shrink amount must be >= 0, got {amount}")
    zeros = 0
    with torch.no_grad():
        for g in gate_parameters(model):
            g.copy_(torch.sign(g) * torch.clamp(g.abs() - amount, min=0.0))
            zeros += int((g == 0).sum())
    return zeros
