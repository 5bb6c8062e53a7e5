"""The general re-parameterizable conv: every branch kind fuses exactly for any kernel, stride,
padding, dilation and groups; RepVGG's block is one configuration of it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from repvgg_lab.models import RepConv, RepVGGBlock
from repvgg_lab.models.repconv import KINDS, Geometry, branch_problem, usable_branches
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn

# (in, out, kernel, stride, padding, dilation, groups)
GEOMETRIES = [
    (4, 4, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 2),
    (6, 6, 3, 1, 2, 2, 1),  # dilated, 'same'
    (4, 4, 5, 1, 2, 1, 4),  # depthwise 5x5
    (4, 8, 5, 2, 4, 2, 1),  # dilated and strided
    (4, 4, (3, 5), 1, (1, 2), 1, 1),  # rectangular
    (4, 6, 4, 2, 1, 1, 1),  # even kernel: no centre tap
    (3, 5, 3, 1, 0, 1, 1),  # 'valid' padding
    (6, 6, 1, 1, 0, 1, 3),  # pointwise, grouped
]


def _usable(geometry) -> tuple[str, ...]:
    cin, cout, k, s, p, d, g = geometry
    g_ = RepConv(cin, cout, k, s, p, d, g, branches=["kxk"]).geometry
    return tuple(kind for kind in KINDS if branch_problem(kind, g_) is None)


def _block(geometry, branches, seed=0, dtype=torch.float32) -> RepConv:
    torch.manual_seed(seed)
    cin, cout, k, s, p, d, g = geometry
    block = RepConv(cin, cout, k, s, p, d, g, branches=branches)
    return randomize_bn(block, seed=seed).to(dtype).eval()


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_every_usable_branch_kind_fuses_exactly_in_float64(geometry) -> None:
    """In float64 the fused conv equals the branch sum to ~1e-13: any error in placement,
    padding, composition or the DBB border would show at the 1e-3 level."""
    kinds = _usable(geometry)
    assert "kxk" in kinds and len(kinds) >= 2, kinds
    block = _block(geometry, ["kxk", "kxk", *kinds[1:]], dtype=torch.float64)
    x = torch.randn(2, geometry[0], 11, 13, dtype=torch.float64)
    with torch.no_grad():
        branched = block(x)
        plain = block.to_plain()(x)
    assert plain.shape == branched.shape
    assert rel_max(branched, plain) <= 1e-12


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_fp32_conversion_sits_at_the_fp32_floor(geometry) -> None:
    kinds = _usable(geometry)
    block = _block(geometry, list(kinds), seed=1)
    x = torch.randn(2, geometry[0], 12, 12)
    with torch.no_grad():
        truth = copy.deepcopy(block).double()(x.double())
        own = rel_max(truth, block(x))
        plain = rel_max(truth, block.to_plain()(x))
    assert plain <= max(3 * own, 1e-5), (plain, own)


def test_the_border_is_exact_because_the_two_stage_map_is_padded_with_the_bn_shift() -> None:
    """With zeros instead of the BN's shift in the padding, the border pixels would differ."""
    block = _block((4, 4, 3, 1, 1, 1, 1), ["1x1_kxk", "1x1_avg"], seed=2, dtype=torch.float64)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        assert rel_max(expected, block.to_plain()(x)) <= 1e-12
        for stage in (block.conv_1x1_kxk, block.conv_1x1_avg):
            stage.bn1.padding = (0, 0)
            stage.forward = _zero_padded(stage)
        wrong = block(x)
    assert rel_max(expected[..., 1:-1, 1:-1], wrong[..., 1:-1, 1:-1]) <= 1e-12
    assert rel_max(expected, wrong) > 1e-3


def _zero_padded(stage: nn.Module):
    """The two-stage branch with an ordinary zero padding between its stages."""

    def forward(x):
        y = nn.functional.pad(stage.bn1(stage.conv1(x)), (1, 1, 1, 1))
        return stage.bn2(stage.pool(y) if hasattr(stage, "pool") else stage.conv2(y))

    return forward


@pytest.mark.parametrize("stride,groups,cout", [(1, 1, 8), (2, 1, 8), (1, 2, 8), (1, 1, 6)])
def test_the_repvgg_configuration_is_the_repvgg_block_bitwise(stride, groups, cout) -> None:
    torch.manual_seed(3)
    ref = randomize_bn(RepVGGBlock(8, cout, stride=stride, groups=groups), seed=3).eval()
    general = RepConv(8, cout, 3, stride, 1, 1, groups, branches="repvgg").eval()
    general.load_state_dict(ref.state_dict(), strict=True)
    assert ("identity" in general.branches) == ref.has_identity
    k_ref, b_ref = ref.get_equivalent_kernel_bias()
    k_gen, b_gen = general.get_equivalent_kernel_bias()
    assert torch.equal(k_ref, k_gen) and torch.equal(b_ref, b_gen)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(ref(x), torch.relu(general(x)))
        assert torch.equal(ref.to_plain()(x), torch.relu(general.to_plain()(x)))


def test_to_plain_leaves_the_block_untouched_and_reparameterize_works_in_place() -> None:
    block = _block((4, 4, 3, 1, 1, 1, 1), "dbb", seed=4)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    plain = block.to_plain()
    assert plain.deploy and not block.deploy
    assert before.keys() == block.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    deploy = RepConv(4, 4, 3, branches="dbb", deploy=True)
    deploy.load_state_dict(plain.state_dict(), strict=True)
    block.reparameterize()
    assert block.deploy and set(block.state_dict()) == {"reparam_conv.weight", "reparam_conv.bias"}
    assert all(
        torch.equal(a, b)
        for a, b in zip(block.state_dict().values(), plain.state_dict().values(), strict=True)
    )


def test_parallel_kxk_branches_form_a_list_and_named_sets_drop_what_the_geometry_forbids() -> None:
    block = RepConv(4, 4, 3, branches=["kxk", "kxk", "kxk", "1x1", "identity"])
    assert isinstance(block.conv_kxk, nn.ModuleList) and len(block.conv_kxk) == 3
    strided = RepConv(4, 4, 3, 2, branches="repvgg")
    assert strided.branches == ("kxk", "1x1") and not hasattr(strided, "identity")
    kept, dropped = usable_branches("acb", Geometry(4, 4, (1, 1)))
    assert kept == ("kxk",) and {k for k, _ in dropped} == {"1xk", "kx1"}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"stride": 2, "branches": ["kxk", "identity"]}, "identity needs in == out"),
        ({"branches": ["kxk", "1x1", "1x1"]}, "listed twice"),
        ({"branches": ["kxk", "bogus"]}, "unknown branch 'bogus'"),
        ({"branches": "bogus"}, "unknown branch set 'bogus'"),
        ({"dilation": 2, "padding": 2, "branches": ["kxk", "1x1_avg"]}, "no dilation"),
        ({"padding": 0, "branches": ["kxk", "1x1"]}, "too small"),
        ({"kernel_size": 4, "padding": 1, "branches": ["kxk", "1x1"]}, "no centre"),
    ],
)
def test_an_impossible_explicit_branch_is_a_one_line_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        RepConv(4, 4, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("padding", "numbers"), [("same", (2, 2)), ("valid", (0, 0))])
def test_string_padding_works_as_in_conv2d(padding, numbers) -> None:
    torch.manual_seed(11)
    block = randomize_bn(RepConv(4, 4, 3, padding=padding, dilation=2, branches="dbb"), seed=11)
    reference = nn.Conv2d(4, 4, 3, padding=padding, dilation=2)
    x = torch.randn(2, 4, 9, 9)
    plain = block.eval().to_plain()
    assert plain.reparam_conv.padding == numbers
    with torch.no_grad():
        assert block(x).shape == reference(x).shape
        assert rel_max(block(x), plain(x)) <= 1e-5
    for bad in ({"kernel_size": 4}, {"stride": 2}):
        with pytest.raises(ValueError, match="padding='same'"):
            RepConv(4, 4, **{"kernel_size": 3, **bad}, padding="same")
    with pytest.raises(ValueError, match="'same' or 'valid'"):
        RepConv(4, 4, 3, padding="full")
