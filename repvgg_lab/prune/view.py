"""The RepVGG-to-PlainNet view: pruning works on PlainNet, RepVGG nets get there by conversion."""

from __future__ import annotations

import copy

import torch
from torch import nn

from repvgg_lab.errors import PruningError
from repvgg_lab.models.convert import reparameterize
from repvgg_lab.models.plain import PlainLayer, PlainNet
from repvgg_lab.models.registry import create_model
from repvgg_lab.models.repvgg import RepVGG


def _repvgg_blocks(model: RepVGG) -> list[nn.Module]:
    return [model.stem, *(block for stage in model.stages for block in stage)]


def as_plain_net(model: nn.Module) -> PlainNet:
    """The PlainNet computing the same function as `model` (a PlainNet is returned as is).

    A RepVGG is re-parameterized first if needed (float64 fusion, `model` untouched); its deploy
    convs and head are copied unchanged, so outputs are bitwise equal. SE models are refused."""
    if isinstance(model, PlainNet):
        return model
    if not isinstance(model, RepVGG):
        raise PruningError(
            f"{type(model).__name__} has no PlainNet form; pruning supports RepVGG models "
            "(without SE) and PlainNet (e.g. RMNet's plain conversion)"
        )
    if any(not isinstance(block.attn, nn.Identity) for block in _repvgg_blocks(model)):
        raise PruningError(
            "squeeze-excitation blocks (e.g. repvgg_d2se) scale channels by an input-dependent "
            "factor, so the model is not a plain conv chain and cannot be channel-pruned"
        )
    deployed = model if all(b.deploy for b in _repvgg_blocks(model)) else reparameterize(model)
    layers = [
        PlainLayer(copy.deepcopy(block.reparam_conv), copy.deepcopy(block.act))
        for block in _repvgg_blocks(deployed)
    ]
    net = PlainNet(layers, copy.deepcopy(deployed.head))
    return net.train(model.training)


def check_prunable(model_name: str) -> None:
    """Refuse, before any training, a registry model whose plain form pruning cannot take
    (tv_* nets keep torchvision's architecture; SE models): one-line PruningError."""
    with torch.device("meta"):  # the structure is enough: nothing allocated or initialised
        plain = create_model(model_name, num_classes=2, deploy=True)
    try:
        as_plain_net(plain)
    except PruningError as err:
        raise PruningError(f"cannot prune {model_name}: {err}") from None
