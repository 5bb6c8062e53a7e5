"""Architectures, conversion, drift measurement and checkpoint I/O (imports torch and reparam)."""

from repvgg_lab.models.blocks import QARepVGGBlock, RepVGGBlock
from repvgg_lab.models.branched import add_branches
from repvgg_lab.models.checkpoints import (
    Checkpoint,
    load_pretrained,
    read_checkpoint,
    save_weights,
)
from repvgg_lab.models.convert import reparameterize
from repvgg_lab.models.drift import DriftReport, measure_drift
from repvgg_lab.models.mobileone import MobileOne, MobileOneBlock, MobileOneConfig
from repvgg_lab.models.registry import MODELS, create_model, list_models
from repvgg_lab.models.repconv import BRANCH_SETS, RepConv
from repvgg_lab.models.repvgg import RepVGG, RepVGGConfig

__all__ = [
    "BRANCH_SETS",
    "RepConv",
    "add_branches",
    "MODELS",
    "Checkpoint",
    "DriftReport",
    "MobileOne",
    "MobileOneBlock",
    "MobileOneConfig",
    "QARepVGGBlock",
    "RepVGG",
    "RepVGGBlock",
    "RepVGGConfig",
    "create_model",
    "list_models",
    "load_pretrained",
    "measure_drift",
    "read_checkpoint",
    "reparameterize",
    "save_weights",
]
