"""Any torchvision classifier as a registry model (`tv_<name>`): built with branches, converted
back into torchvision's own architecture, and named mistakes refused in one line."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from repvgg_lab.errors import ConfigError, UnknownModelError
from repvgg_lab.models import create_model, list_models, measure_drift, reparameterize
from repvgg_lab.models.branched import BranchedConv
from repvgg_lab.models.registry import get_config
from repvgg_lab.reparam import rel_max

FP32_REL = 1e-5


def _trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (fresh BNs would hide fusion mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=gen) - 0.5)
            bn.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return net.eval()


def test_acb_resnet18_converts_into_torchvision_resnet18() -> None:
    net = create_model("tv_resnet18", num_classes=10, in_channels=1, branches="acb")
    branched = [m for m in net.modules() if isinstance(m, BranchedConv)]
    # Every 7x7 and 3x3 conv; the 1x1 downsample convs have no 1xk/kx1 to add and stay as is.
    assert len(branched) == 17 and all(b.branches == ("kxk", "1xk", "kx1") for b in branched)
    assert all(type(net.get_submodule(f"layer{i}.0.downsample.0")) is nn.Conv2d for i in (2, 3, 4))
    assert net.conv1.in_channels == 1
    _trained_like(net)
    plain = reparameterize(net)
    assert isinstance(plain, torchvision.models.ResNet) and not any(
        isinstance(m, BranchedConv) for m in plain.modules()
    )
    # The converted weights load strictly into the registry's deploy form (torchvision's net).
    deployed = create_model("tv_resnet18", num_classes=10, in_channels=1, deploy=True)
    assert type(deployed) is torchvision.models.ResNet
    deployed.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        truth = net.double()(x.double())
        assert rel_max(truth, deployed.eval()(x)) < FP32_REL


def test_every_conv_bn_pair_of_mobilenet_v2_gets_dbb_branches() -> None:
    net = create_model("tv_mobilenet_v2", num_classes=7, branches="dbb")
    fresh = torchvision.models.mobilenet_v2(num_classes=7)
    pairs = sum(isinstance(m, nn.BatchNorm2d) for m in fresh.modules())
    branched = [m for m in net.modules() if isinstance(m, BranchedConv)]
    assert len(branched) == pairs == 52
    # The dense 3x3 stem gets all four DBB branches, the depthwise 3x3s the published
    # depthwise block (no 1x1 branch, pooling without a 1x1 conv); 1x1s what a 1x1 allows.
    by_kind = {b.geometry.depthwise: b.branches for b in branched if b.geometry.kernel == (3, 3)}
    assert {b.branches for b in branched if b.geometry.kernel == (3, 3)} == set(by_kind.values())
    assert by_kind == {False: ("kxk", "1x1", "1x1_avg", "1x1_kxk"), True: ("kxk", "avg", "1x1_kxk")}
    plain = reparameterize(_trained_like(net))
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in fresh.state_dict().items()
    }
    # branches="none" (the default) is torchvision's own net.
    assert create_model("tv_mobilenet_v2", num_classes=7).state_dict().keys() == (
        fresh.state_dict().keys()
    )


def test_per_block_drift_of_a_branched_net_includes_the_restored_bn() -> None:
    net = _trained_like(create_model("tv_resnet18", num_classes=10, branches="dbb"))
    report = measure_drift(net, reparameterize(net), torch.randn(2, 3, 32, 32))
    assert len(report.blocks) == 20 and report.deploy_rel_max < FP32_REL
    assert max(b["deploy_rel_max"] for b in report.blocks.values()) < FP32_REL


def test_a_net_without_branches_is_its_own_plain_form_only_when_allowed() -> None:
    net = create_model("tv_resnet18", num_classes=10, branches="none")
    with pytest.raises(TypeError, match="no re-parameterizable"):
        reparameterize(net)
    plain = reparameterize(net, allow_plain=True)
    assert plain is not net and plain.state_dict().keys() == net.state_dict().keys()


def test_torchvision_names_are_listed_on_request() -> None:
    assert not any(n.startswith("tv_") for n in list_models())
    names = list_models(torchvision=True)
    assert {"tv_resnet18", "tv_vgg11_bn", "tv_mobilenet_v2"} <= set(names)
    assert set(list_models()) < set(names)
    assert get_config("tv_vgg11_bn").arch == "vgg11_bn"


@pytest.mark.parametrize(
    ("name", "shown"),
    [("tv_nope", "tv_resnet18"), ("tv_resnet1", "tv_resnet18"), ("tv_", "tv_mobilenet_v2")],
)
def test_unknown_torchvision_name_is_one_line_with_valid_names(name: str, shown: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model(name)
    message = str(info.value)
    assert name in message and shown in message and "\n" not in message


def test_unknown_model_error_says_tv_names_are_accepted() -> None:
    with pytest.raises(UnknownModelError, match=r"tv_<any torchvision classifier>"):
        get_config("resnet18")


def test_bad_branches_and_branchless_nets_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("tv_resnet18", branches="bogus")
    assert str(info.value) == "branches must be one of none, repvgg, acb, dbb, got 'bogus'"
    with pytest.raises(ConfigError, match="in_channels must be an integer >= 1"):
        create_model("tv_resnet18", in_channels=0)
    with torch.device("meta"), pytest.raises(ConfigError) as info:
        create_model("tv_vit_b_16", image_size=32, branches="repvgg")
    assert "no conv + BatchNorm2d pair" in str(info.value) and "branches=none" in str(info.value)
