"""DBB as published (Ding et al., CVPR 2021): a depthwise conv gets no 1x1 branch, a zero-padded
pooling + BN and a 1x1 -> kxk branch twice as wide inside; the 1x1 -> kxk branch's first conv is
identity-based where its width is the input's; the inner width is an option. Both layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from repvgg_lab import RepConv, add_branches, reparameterize
from repvgg_lab.models.layers import IdentityConv1x1
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _depthwise(channels: int) -> nn.Sequential:
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(channels))


@pytest.mark.parametrize("channels", [8, 24])
def test_a_depthwise_conv_gains_28_c_parameters_and_no_1x1_branch(channels) -> None:
    """avg-pool BN 2C; 1x1 -> kxk: 1x1 conv 2C, its BN 4C, kxk conv 18C, BN 2C."""
    source = _depthwise(channels)
    branched = add_branches(source, "dbb")
    block = branched[0]
    assert block.branches == ("kxk", "avg", "1x1_kxk")
    assert _params(branched) - _params(source) == 28 * channels
    two = block.conv_1x1_kxk
    assert not hasattr(block, "conv_1x1") and not hasattr(block.avg, "conv1")
    assert two.conv1.weight.shape == (2 * channels, 1, 1, 1) and type(two.conv1) is nn.Conv2d
    assert two.conv2.weight.shape == (channels, 2, 3, 3)


def test_online_depthwise_dbb_has_the_same_structure_without_bns() -> None:
    c = 8
    block = add_branches(_depthwise(c), "dbb", mode="online")[0]
    assert block.branches == ("kxk", "avg", "1x1_kxk")
    shapes = {n: tuple(p.shape) for n, p in block.named_parameters()}
    assert shapes == {
        "conv_kxk.scale": (c,),
        "conv_kxk.weight": (c, 1, 3, 3),
        "avg.scale": (c,),
        "conv_1x1_kxk.scale": (c,),
        "conv_1x1_kxk.weight1": (2 * c, 1, 1, 1),
        "conv_1x1_kxk.weight2": (c, 2, 3, 3),
    }
    assert not block.conv_1x1_kxk.identity_based


def test_the_first_conv_is_identity_based_where_the_inner_width_is_the_inputs() -> None:
    dense = RepConv(6, 8, 3, branches="dbb")
    conv1 = dense.conv_1x1_kxk.conv1
    assert isinstance(conv1, IdentityConv1x1)
    # The parameter is the change to the identity: zero at the start, so weight decay pulls the
    # kernel towards the identity, not towards zero.
    assert not conv1.weight.detach().any()
    identity = torch.zeros(6, 6, 1, 1)
    identity[range(6), range(6)] = 1
    assert torch.equal(conv1.kernel().detach(), identity)
    x = torch.randn(1, 6, 5, 5)
    assert torch.equal(conv1(x), x)
    online = RepConv(6, 8, 3, branches="dbb", mode="online").conv_1x1_kxk
    assert online.identity_based and not online.weight1.detach().any()
    # A depthwise conv with inner width == input channels (an option) is identity-based too.
    narrow = RepConv(4, 4, 3, groups=4, branches="dbb", inner_channels=4)
    assert isinstance(narrow.conv_1x1_kxk.conv1, IdentityConv1x1)
    wide = add_branches(nn.Sequential(*_depthwise(4)), "dbb", inner_multiplier=3)[0]
    assert wide.conv_1x1_kxk.conv2.weight.shape == (4, 3, 3, 3)
    with pytest.raises(ValueError, match="not a positive multiple of groups=4"):
        RepConv(4, 4, 3, groups=4, branches="dbb", inner_channels=6)


@pytest.mark.parametrize("mode", ["offline", "online"])
@pytest.mark.parametrize(
    ("geometry", "inner"),
    [((8, 8, 3, 1, 1, 8), None), ((8, 8, 3, 2, 1, 8), None), ((8, 8, 5, 1, 2, 8), 24),
     ((6, 8, 3, 1, 1, 2), None), ((6, 8, 3, 2, 1, 2), 12)],
)  # fmt: skip
def test_the_published_structure_converts_exactly(geometry, inner, mode) -> None:
    """Float64 to 1e-12, padded pooling at the border and at stride 2 included."""
    torch.manual_seed(0)
    cin, cout, k, s, p, g = geometry
    block = RepConv(cin, cout, k, s, p, 1, g, branches="dbb", mode=mode, inner_channels=inner)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if "bn" not in name:
                param.add_(torch.randn_like(param) * 0.3)
    block = randomize_bn(block, seed=1).double().eval()
    x = torch.randn(2, cin, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        assert rel_max(block(x), block.to_plain()(x)) <= 1e-12


def test_mobilenet_like_depthwise_pairs_convert_back_strictly() -> None:
    torch.manual_seed(2)

    def make() -> nn.Sequential:
        return nn.Sequential(*_depthwise(8), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False),
                             nn.BatchNorm2d(8))  # fmt: skip

    source = randomize_bn(make(), seed=2).eval()
    branched = randomize_bn(add_branches(source, "dbb"), seed=3).eval()
    x = torch.randn(2, 8, 7, 7)
    fresh = make().eval()
    fresh.load_state_dict(reparameterize(branched).state_dict(), strict=True)
    with torch.no_grad():
        assert rel_max(branched(x), fresh(x)) <= 1e-5
