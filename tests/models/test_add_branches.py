"""add_branches on nets the project never built: a torchvision ResNet and a small U-Net with
dilated, strided, even-sized, biased, transposed and unpaired convs. The branched net starts as the
same function; after training-like BN changes, reparameterize gives back the user's own
architecture at the fp32 floor."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torchvision
from torch import nn

from repvgg_lab import add_branches, create_model, reparameterize
from repvgg_lab.models.branched import BranchedConv, FoldedBN
from repvgg_lab.models.small_cnn import SmallCNN
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn


def _conv_bn(cin, cout, k=3, stride=1, padding=1, dilation=1, bias=False) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=bias)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


class TinyUNet(nn.Module):
    """Encoder with a strided, a dilated, a 5x5 and an even 4x4 strided conv; a decoder with a
    transposed conv and a skip concat; a conv with bias before its BN; a reflect-padded conv and a
    1x1 head without BN (both left alone)."""

    def __init__(self, cin: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.enc1 = _conv_bn(cin, 8)
        self.down = _conv_bn(8, 16, stride=2)
        self.dilated = _conv_bn(16, 16, padding=2, dilation=2)
        self.wide = _conv_bn(16, 16, k=5, padding=2, bias=True)
        self.even = _conv_bn(16, 16, k=4, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect", bias=False)
        self.reflect = nn.Sequential(reflect, nn.BatchNorm2d(16))
        self.dec = _conv_bn(32, 8)
        self.rect = nn.Sequential(
            nn.Conv2d(8, 8, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(8)
        )
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        skip = self.enc1(x)
        y = self.even(self.wide(self.dilated(self.down(skip))))
        y = self.reflect(self.up(y))
        y = nn.functional.interpolate(y, size=skip.shape[-2:])
        y = self.dec(torch.cat([y, skip[:, :16].repeat(1, 2, 1, 1)[:, :16]], dim=1))
        return self.head(torch.cat([y, self.rect(y)], dim=1))


class Untraceable(nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if y.sum() > 0:
            y = y + 1
        return self.bn2(self.conv2(y))


def _check(make, branches: str, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """The issue's acceptance: same function at the start; at the fp32 floor after conversion;
    the converted state dict loads strictly into a fresh copy of the original model."""
    torch.manual_seed(seed)
    source = randomize_bn(make(), seed=seed).eval()
    before = copy.deepcopy(source.state_dict())
    branched = add_branches(source, branches).eval()
    assert any(isinstance(m, BranchedConv) for m in branched.modules())
    with torch.no_grad():
        assert rel_max(source(x), branched(x)) <= 1e-6
        # the input net is untouched
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in before.items())
        assert not any(isinstance(m, BranchedConv) for m in source.modules())
        randomize_bn(branched, seed=seed + 1)
        truth = copy.deepcopy(branched).double()(x.double())
        own = rel_max(truth, branched(x))
        plain = reparameterize(branched)
        fresh = make().eval()
        fresh.load_state_dict(plain.state_dict(), strict=True)
        assert [type(m) for m in fresh.modules()] == [type(m) for m in plain.modules()]
        err = rel_max(truth, fresh(x))
        changed = rel_max(truth, source(x))
    assert err <= max(3 * own, 1e-5), (err, own)
    assert changed > 1e-3  # the BN changes made it another function
    return branched


@pytest.mark.parametrize("branches", ["repvgg", "acb", "dbb"])
def test_resnet18_gets_branches_and_converts_back_to_resnet18(branches) -> None:
    x = torch.randn(2, 3, 64, 64)
    _check(lambda: torchvision.models.resnet18(num_classes=10), branches, x)


@pytest.mark.parametrize("branches", ["repvgg", "acb", "dbb"])
def test_a_small_unet_with_dilated_strided_and_even_convs_converts_back(branches) -> None:
    branched = _check(TinyUNet, branches, torch.randn(2, 3, 24, 24), seed=2)
    names = {n for n, m in branched.named_modules() if isinstance(m, BranchedConv)}
    assert {"down.0", "dilated.0", "wide.0"} <= names
    # an even kernel has no centre tap for a 1x1, 1x4, 4x1 or identity: only DBB's kinds fit
    assert ("even.0" in names) == (branches == "dbb")
    assert not {"up", "reflect.0", "head"} & names
    assert isinstance(branched.dilated[1], FoldedBN)


def test_each_conv_decision_is_logged_in_one_line(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="repvgg_lab.models.branched"):
        add_branches(TinyUNet(), "dbb")
    lines = [r.getMessage() for r in caplog.records]
    assert all("\n" not in line for line in lines)
    by_conv = {line.split(":")[0].split(" + ")[0]: line for line in lines}
    assert "transposed conv; left alone" in by_conv["up"]
    assert "padding_mode='reflect'" in by_conv["reflect.0"]
    assert "not followed by a BatchNorm2d" in by_conv["head"]
    assert "branches kxk+1x1_avg+1x1_kxk (left out: 1x1)" in by_conv["even.0"]
    assert "branches kxk+1x1+1x1_kxk (left out: 1x1_avg)" in by_conv["dilated.0"]
    assert len(by_conv) == 10  # every conv of the net, once


def test_an_untraceable_net_is_paired_by_registration_order(caplog) -> None:
    x = torch.rand(2, 3, 16, 16)
    with caplog.at_level(logging.INFO, logger="repvgg_lab.models.branched"):
        _check(Untraceable, "repvgg", x, seed=3)
    assert any("cannot be traced" in r.getMessage() for r in caplog.records)


def test_branches_start_silent_but_learn() -> None:
    """gamma = beta = 0 on the new branches: no output change, yet the gammas get gradients."""
    torch.manual_seed(5)
    net = add_branches(nn.Sequential(*_conv_bn(3, 8)), "dbb")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.randn(4, 3, 8, 8)).square().mean()
    loss.backward()
    opt.step()
    gammas = [net[0].conv_1x1.bn.weight, net[0].conv_1x1_kxk.bn2.weight]
    assert all(float(g.detach().abs().sum()) > 0 for g in gammas)


def test_none_copies_and_a_net_without_pairs_is_a_one_line_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    copied = add_branches(net, "none")
    assert copied is not net and isinstance(copied[0], nn.Conv2d)
    with pytest.raises(ValueError, match="no conv \\+ BatchNorm2d pair"):
        add_branches(net, "dbb")
    with pytest.raises(ValueError, match="unknown branch set 'big'"):
        add_branches(TinyUNet(), "big")


@pytest.mark.parametrize("branches", ["repvgg", "acb", "dbb"])
def test_small_cnn_from_the_registry_converts_to_its_own_deploy_form(branches) -> None:
    x = torch.randn(2, 3, 32, 32)
    branched = _check(lambda: SmallCNN(num_classes=10), branches, x, seed=4)
    registry = create_model("small_cnn", num_classes=10, branches=branches)
    assert {n for n, m in registry.named_modules() if isinstance(m, BranchedConv)} == {
        n for n, m in branched.named_modules() if isinstance(m, BranchedConv)
    }
    plain = create_model("small_cnn", num_classes=10, deploy=True)
    plain.load_state_dict(reparameterize(registry).state_dict(), strict=True)


def test_the_branched_net_keeps_the_mode_of_the_net_it_came_from() -> None:
    """A pretrained net in eval mode gives the same outputs right away, without another .eval(),
    and running statistics are not updated by a forward pass."""
    torch.manual_seed(6)
    source = randomize_bn(nn.Sequential(*_conv_bn(3, 8), *_conv_bn(8, 8)), seed=6).eval()
    branched = add_branches(source, "dbb")
    assert not any(m.training for m in branched.modules())
    x = torch.randn(2, 3, 8, 8)
    before = copy.deepcopy(branched.state_dict())
    with torch.no_grad():
        assert rel_max(source(x), branched(x)) <= 1e-6
    assert all(torch.equal(v, branched.state_dict()[k]) for k, v in before.items())
    assert not any(m.training for m in reparameterize(branched).modules())
    assert all(m.training for m in add_branches(source.train(), "dbb").modules())


def test_an_explicit_list_may_name_kxk_anywhere_but_must_name_it() -> None:
    """The original conv + BN is the first kxk branch, wherever "kxk" is in the list."""
    torch.manual_seed(7)
    source = randomize_bn(nn.Sequential(*_conv_bn(3, 8)), seed=7).eval()
    x = torch.randn(2, 3, 8, 8)
    for kinds in (["1x1", "kxk"], ["1x1_kxk", "kxk", "1x1_avg"]):
        branched = add_branches(source, kinds).eval()
        assert branched[0].branches[0] == "kxk"
        with torch.no_grad():
            assert rel_max(source(x), branched(x)) <= 1e-6
    with pytest.raises(ValueError, match="'kxk'") as err:
        add_branches(source, ["1x1", "1x1_kxk"])
    assert "\n" not in str(err.value)


def test_a_same_padded_conv_comes_back_same_padded() -> None:
    torch.manual_seed(8)
    conv = nn.Conv2d(3, 8, 3, padding="same", bias=False)
    source = randomize_bn(nn.Sequential(conv, nn.BatchNorm2d(8)), seed=8).eval()
    branched = randomize_bn(add_branches(source, "dbb"), seed=9).eval()
    plain = reparameterize(branched)
    assert plain[0].padding == "same"
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert rel_max(branched(x), plain(x)) <= 1e-5


def test_a_net_whose_convs_all_have_branches_already_says_so() -> None:
    branched = add_branches(TinyUNet(), "dbb")
    with pytest.raises(ValueError, match="already") as err:
        add_branches(branched, "acb")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="already"):
        add_branches(create_model("repvgg_a0", num_classes=10), "dbb")


def test_a_frozen_layer_stays_frozen_with_its_branches() -> None:
    source = nn.Sequential(*_conv_bn(3, 8), *_conv_bn(8, 8))
    source[0].requires_grad_(False)
    branched = add_branches(source, "dbb")
    assert not any(p.requires_grad for p in branched[0].parameters())
    assert all(p.requires_grad for p in branched[3].parameters())


class Shared(nn.Module):
    """A conv applied twice, a conv whose output also feeds a skip, and one ordinary pair."""

    def __init__(self) -> None:
        super().__init__()
        self.twice, self.bn_a = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.skip, self.bn_skip = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn_a(self.twice(x)) + self.twice(x)
        s = self.skip(y)
        return self.bn(self.conv(self.bn_skip(s) + s))


def test_the_log_says_why_a_traced_conv_has_no_bn(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="repvgg_lab.models.branched"):
        branched = add_branches(Shared(), "repvgg")
    lines = {r.getMessage().split(":")[0].split(" + ")[0]: r.getMessage() for r in caplog.records}
    assert "called 2 times in forward" in lines["twice"]
    assert "its output feeds 2 consumers" in lines["skip"]
    assert isinstance(branched.conv, BranchedConv) and isinstance(branched.twice, nn.Conv2d)
