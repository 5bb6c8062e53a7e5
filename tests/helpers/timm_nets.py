"""timm nets with trained-like BN, and our registry models about to receive their weights
(shared by the tests that use timm as an oracle)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from repvgg_lab.models import create_model
from repvgg_lab.testing import randomize_bn


def random_timm(name: str, seed: int) -> nn.Module:
    """timm's `name` with weights drawn under `seed` and `randomize_bn` statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn(timm.create_model(name), seed=seed).eval()


def empty_model(name: str, **kwargs) -> nn.Module:
    """Our model with uninitialised weights (about to be overwritten by load_pretrained)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return model.to_empty(device="cpu").eval()
