"""The digits net of the int8 tests: a narrow RepVGG-A0 trained for a few epochs on the
embedded digits data, and the outlier planted in it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.models import create_model

IMG = 32
WIDTHS = (0.25, 0.25, 0.25, 0.5)
PLANT_LAYER, PLANT_K = 8, 50.0


def digits_module(batch_size: int = 32) -> DigitsDataModule:
    """The digits data module of the default job (32x32, 3 channels, no augmentation), set up."""
    module = DigitsDataModule(img_size=IMG, batch_size=batch_size, in_channels=3, augment=False)
    module.setup()
    return module


def train_digits(epochs: int = 4, seed: int = 0, name: str = "repvgg_a0") -> nn.Module:
    """A narrow `name` trained on digits with the default job's SGD + cosine (plain loop)."""
    torch.manual_seed(seed)
    net = create_model(name, num_classes=10, widths=WIDTHS)
    loader = digits_module().train_dataloader()
    opt = torch.optim.SGD(net.parameters(), lr=0.0125, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def widest_channel(net: nn.Module, layer: int = PLANT_LAYER) -> int:
    """The output channel of conv `layer` with the largest max|w|. Planting the outlier there
    makes it PLANT_K times the layer's widest channel on any trained net; a fixed channel
    (channel 0) spans 0.30x to 0.81x the widest depending on the training, and the int8 damage
    of planting x50 in it then ranged from 8 to 173 images of 269 over 16 nets."""
    weight = net.features[layer].conv.weight.detach()
    return int(weight.flatten(1).abs().amax(dim=1).argmax())
