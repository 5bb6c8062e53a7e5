"""Conversion after DDP's SyncBatchNorm round trip (timm's re-parameterization asserts there)."""

import torch
from pytorch_lightning.plugins import TorchSyncBatchNorm
from torch import nn

from repvgg_lab.models import create_model, reparameterize
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn


def test_converts_after_sync_batchnorm_and_revert() -> None:
    net = randomize_bn(create_model("repvgg_a0", num_classes=10), seed=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        truth = net.double()(x.double())
    net = net.float()
    plugin = TorchSyncBatchNorm()
    synced = plugin.apply(net)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    for candidate in (synced, plugin.revert(synced)):
        plain = reparameterize(candidate).eval()
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
        with torch.no_grad():
            assert rel_max(truth, plain(x)) < 1e-5
