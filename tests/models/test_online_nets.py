"""Online branches on whole nets: add_branches(mode="online") on torchvision nets keeps their
function at the start, converts back to their own architecture at the fp32 floor, and every
branch learns; the registry builds online small_cnn, tv_* and RepVGG nets."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from repvgg_lab import add_branches, create_model, measure_drift, reparameterize
from repvgg_lab.errors import ConfigError
from repvgg_lab.models.branched import BranchedConv, FoldedBN
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn


def _randomize_online(net: nn.Module, seed: int) -> nn.Module:
    """Scales of either sign away from zero, new kernels, trained-like BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if not isinstance(m, BranchedConv):
                continue
            for name, p in m.named_parameters():
                if name.endswith("scale"):
                    sign = torch.randint(0, 2, p.shape, generator=gen) * 2 - 1
                    p.copy_((torch.rand(p.shape, generator=gen) * 0.5 + 0.25) * sign)
                elif name.endswith(("weight1", "weight2")) or not name.startswith("conv_kxk"):
                    p.copy_(torch.randn(p.shape, generator=gen) * p.detach().std().clamp(0.05))
    return randomize_bn(net, seed=seed)


def _check_online(make, branches: str, x: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """The issue's acceptance; returns the measured errors."""
    torch.manual_seed(seed)
    source = randomize_bn(make(), seed=seed).eval()
    branched = add_branches(source, branches, mode="online").eval()
    assert not any(isinstance(m, FoldedBN) for m in branched.modules())  # the BNs stay real
    with torch.no_grad():
        start = rel_max(source(x), branched(x))
        _randomize_online(branched, seed + 1)
        net64 = copy.deepcopy(branched).double()
        truth = net64(x.double())
        own = rel_max(truth, branched(x))
        fresh = make().eval()
        fresh.load_state_dict(reparameterize(branched).state_dict(), strict=True)
        err = rel_max(truth, fresh(x))
        err64 = rel_max(truth, reparameterize(net64)(x.double()))
        changed = rel_max(truth, source(x))
    assert start <= 1e-6, start
    assert err <= max(3 * own, 1e-5), (err, own)
    assert err64 <= 1e-12, err64
    assert changed > 1e-2  # randomising made it another function
    return {"start": start, "own": own, "plain": err, "fp64": err64}


@pytest.mark.parametrize("branches", ["dbb", "acb", "repvgg"])
def test_online_resnet18_converts_back_into_torchvision_resnet18(branches) -> None:
    x = torch.randn(2, 3, 64, 64)
    _check_online(lambda: torchvision.models.resnet18(), branches, x)


def test_online_dbb_mobilenet_v2_converts_back_into_torchvision_mobilenet_v2() -> None:
    x = torch.randn(2, 3, 32, 32)
    _check_online(lambda: torchvision.models.mobilenet_v2(num_classes=10), "dbb", x, seed=1)


def test_a_conv_bias_survives_online_conversion() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    source = randomize_bn(nn.Sequential(conv, nn.BatchNorm2d(8)), seed=2).eval()
    x = torch.randn(2, 3, 9, 9)
    branched = add_branches(source, "acb", mode="online").eval()
    with torch.no_grad():
        assert rel_max(source(x), branched(x)) <= 1e-6
        plain = reparameterize(_randomize_online(branched, 3))
        assert torch.equal(plain[0].bias, branched[0].bias)
        assert rel_max(branched(x), plain(x)) <= 1e-5


def test_in_a_training_step_every_branch_kernel_and_scale_gets_a_gradient() -> None:
    torch.manual_seed(4)
    source = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
    )  # fmt: skip
    net = add_branches(source, "dbb", mode="online").train()
    x = torch.randn(4, 3, 8, 8)
    net(x).square().mean().backward()  # at the start only the scales can move the new branches
    scales = {n: p.grad for n, p in net.named_parameters() if n.endswith("scale")}
    assert len(scales) == 7 and all(g.abs().sum() > 0 for g in scales.values())
    _randomize_online(net, 5).zero_grad()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(x).square().mean().backward()
    branch = {n: p.grad for n, p in net.named_parameters() if n.split(".")[0] in ("0", "3")}
    dead = {n for n, g in branch.items() if g is None or not g.abs().sum() > 0}
    assert dead == set() and len(branch) == 7 + 8  # scales; kernels: 5 dense, 3 depthwise
    before = copy.deepcopy(net.state_dict())
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if n in branch)


def test_per_block_drift_of_an_online_net_compares_conv_with_conv() -> None:
    net = create_model("tv_resnet18", num_classes=10, branches="dbb", branch_mode="online")
    net = _randomize_online(net, 8).eval()
    report = measure_drift(net, reparameterize(net), torch.randn(2, 3, 32, 32))
    assert len(report.blocks) == 20 and report.deploy_rel_max < 1e-5
    assert max(b["deploy_rel_max"] for b in report.blocks.values()) < 1e-5


def test_the_registry_builds_online_nets_from_the_config_value() -> None:
    tv = create_model("tv_resnet18", num_classes=10, branches="dbb", branch_mode="online")
    assert all(m.online for m in tv.modules() if isinstance(m, BranchedConv))
    assert isinstance(tv.bn1, nn.BatchNorm2d) and not isinstance(tv.bn1, FoldedBN)
    small = create_model("small_cnn", num_classes=10, branches="acb", branch_mode="online")
    deploy = create_model("small_cnn", num_classes=10, deploy=True)
    deploy.load_state_dict(reparameterize(small).state_dict(), strict=True)
    with pytest.raises(ConfigError, match="branch_mode must be one of offline, online"):
        create_model("tv_resnet18", branches="dbb", branch_mode="sometimes")
    # branch_init=orepa: OREPA's starting scales (kxk, 1x1, 1x1 -> avg, 1x1 -> kxk), not the
    # plain net's function.
    kwargs = {"branches": "dbb", "branch_mode": "online", "branch_init": "orepa"}
    block = next(m for m in create_model("small_cnn", **kwargs).modules() if hasattr(m, "online"))
    assert [float(m.scale.detach()[0]) for _, m in block.branch_modules()] == [0.25, 1, 0.25, 0.5]


@pytest.mark.parametrize("gate", [False, True])
def test_online_repvgg_a0_deploys_as_repvgg_a0(trained, truth, gate) -> None:
    net = trained("repvgg_a0", seed=6, branch_mode="online", gate=gate)
    blocks = [m for m in net.modules() if hasattr(m, "online")]
    assert blocks and all(b.online and isinstance(b.bn, nn.BatchNorm2d) for b in blocks)
    _randomize_online_blocks(net, 7)
    x = torch.randn(2, 3, 32, 32)
    ref = truth(net, x)
    with torch.no_grad():
        own = rel_max(ref, net(x))
        deploy = create_model("repvgg_a0", num_classes=10, deploy=True)
        deploy.load_state_dict(reparameterize(net).state_dict(), strict=True)
        err = rel_max(ref, deploy.eval()(x))
        err64 = rel_max(ref, reparameterize(copy.deepcopy(net).double())(x.double()))
    assert err <= max(3 * own, 1e-5), (err, own)
    assert err64 <= 1e-12
    with pytest.raises(ConfigError, match="QARepVGG blocks have no online form"):
        create_model("qarepvgg_a0", branch_mode="online")


def _randomize_online_blocks(net: nn.Module, seed: int) -> None:
    """Scales away from OREPA's start and gates away from 1, so their folding shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("scale", "gate")):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
