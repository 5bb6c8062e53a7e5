"""Pruning of plain nets: exactness at every pixel (borders, odd sizes, max-pool, groups), the
failure of naive bias absorption, RepVGG -> PlainNet, gates and the sparsity penalty."""

import copy
import math

import pytest
import torch
from torch import nn

from repvgg_lab.errors import InputError, PruningError
from repvgg_lab.models import (
    RepVGGBlock,
    create_model,
    reparameterize,
)
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.models.repvgg import RepVGGConfig
from repvgg_lab.prune import (
    channel_scores,
    prune_plain,
    prune_summary,
    prune_to_macs,
)
from repvgg_lab.prune.gates import gate_parameters, shrink_gates_, sparsity_penalty
from repvgg_lab.prune.view import as_plain_net
from repvgg_lab.reparam.prune import fold_into_bias, prune_inputs
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import count_macs, count_params
from tests.helpers.prune_nets import REMOVABLE, assert_equivalent, build_net, features, rel

SIZES = (32, 33)  # 33: stride-2 convs then read their bottom/right zero padding


@pytest.fixture(scope="module")
def net_and_pruned():
    net = build_net()
    pruned, summary = prune_plain(net, threshold=0.0)
    return net, pruned, summary


def test_threshold_zero_removes_exactly_the_constant_channels(net_and_pruned):
    net, pruned, summary = net_and_pruned
    layers = summary["layers"]
    assert summary["exact"]
    expected = {0: (2, 3), 1: (1, 3), 2: (2, 3), 3: (2, 2)}  # (dead, constant)
    for i, (dead, const) in expected.items():
        assert (layers[i]["dead"], layers[i]["constant"]) == (dead, const)
        gone = {c for c, _ in REMOVABLE[i]} | ({4} if i == 1 else set())
        assert (
            set(layers[i]["source"]) - {-1} == set(range(net.features[i].conv.out_channels)) - gone
        )
    assert 6 in layers[1]["source"]  # reads constants only, but differs at the borders
    assert [r["fold"] for r in layers] == [
        "carrier",
        "carrier",
        "bias",
        "carrier",
        "carrier",
        "carrier",
        "head",
    ]
    assert layers[4]["dead"] + layers[4]["constant"] == 4  # 2 per group, not 3 + 2
    assert layers[4]["carriers"] == 2 and layers[5]["carriers"] == 4
    assert layers[5]["channels_after"] == 32 - 8 + 4
    # Grouped convs stay grouped, with equal channels per group.
    assert pruned.features[4].conv.groups == 2 and pruned.features[6].conv.groups == 4
    assert pruned.features[6].conv.in_channels == 28 and pruned.features[6].conv.out_channels == 28
    assert type(pruned.features[1].act) is nn.ReLU6 and type(pruned.features[3].act) is nn.Identity


@pytest.mark.parametrize("size", SIZES)
def test_pruned_net_matches_at_every_pixel_float32(net_and_pruned, size):
    net, pruned, summary = net_and_pruned
    x = torch.randn(2, 3, size, size)
    assert_equivalent(net, pruned, summary, x, rtol=2e-6)


@pytest.mark.parametrize("size", (*SIZES, 19))
def test_pruned_net_matches_at_every_pixel_float64(size):
    net = build_net(seed=3).double()
    pruned, summary = prune_plain(net, threshold=0.0)
    assert pruned.features[0].conv.weight.dtype == torch.float64
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    assert_equivalent(net, pruned, summary, x, rtol=1e-12)


def _collapse_carriers(pruned: PlainNet, summary: dict, layer: int) -> PlainNet:
    """The classic absorption: drop layer `layer`'s carriers and add a_c * sum_taps K to the
    next conv's bias (as if the constants were there at the border too)."""
    naive = copy.deepcopy(pruned)
    rec = summary["layers"][layer]
    producer, consumer = naive.features[layer], naive.features[layer + 1].conv
    assert isinstance(producer.act, nn.ReLU)  # no per-channel bounds to slice
    carrier = torch.tensor(rec["source"]) < 0
    real = (~carrier).nonzero().flatten()
    with torch.no_grad():
        bias = fold_into_bias(consumer.weight, consumer.groups, consumer.bias, real, carrier)
        weight = prune_inputs(consumer.weight, consumer.groups, real, None, rec["carriers"])
        new = nn.Conv2d(weight.shape[1], weight.shape[0], 3, 1, 1, dtype=weight.dtype)
        new.weight.copy_(weight)
        new.bias.copy_(bias)
        naive.features[layer + 1].conv = new
        old = producer.conv
        cut = nn.Conv2d(old.in_channels, real.numel(), 3, old.stride, 1, dtype=weight.dtype)
        cut.weight.copy_(old.weight[real])
        cut.bias.copy_(old.bias[real])
        producer.conv = cut
    return naive


@pytest.mark.parametrize("size", SIZES)
def test_naive_bias_absorption_is_wrong_on_the_border_only(size):
    net = build_net(seed=4).double()
    pruned, summary = prune_plain(net, threshold=0.0)
    naive = _collapse_carriers(pruned, summary, 0)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        ref, bad = features(net, x)[1], features(naive, x)[1]
        src = torch.tensor(summary["layers"][1]["source"])
        real = src >= 0
        err = (bad[:, real] - ref[:, src[real]]).abs() / ref.abs().max()
        # Layer 1 is a zero-padded 3x3 conv then a 3x3/2 max-pool: every pooled pixel off the
        # outer ring sees only conv outputs whose windows never touch the padding.
        assert float(err[..., 1:-1, 1:-1].max()) < 1e-12
        ring = err.clone()
        ring[..., 1:-1, 1:-1] = 0
        assert float(ring.max()) > 0.05
        # ... and the border error spreads through the later padded convs into the logits.
        assert rel(net(x), naive(x)) > 1e-3
        assert rel(net(x), pruned(x)) < 1e-12


def test_spec_round_trip_rebuilds_the_pruned_net(net_and_pruned):
    _, pruned, _ = net_and_pruned
    rebuilt = PlainNet.from_spec(pruned.spec())
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
    assert pruned.spec()["layers"][5]["act"] == "ChannelClamp"


def test_pruning_a_pruned_net_again_changes_nothing(net_and_pruned):
    _, pruned, summary = net_and_pruned
    again, summary2 = prune_plain(pruned, threshold=0.0)
    # Each carrier (zero filter, constant 1) is folded into a new carrier: same widths.
    assert summary2["channels_after"] == summary["channels_after"]
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert rel(pruned(x), again(x)) < 2e-6


def test_input_net_is_left_untouched():
    net = build_net()
    before = copy.deepcopy(net.state_dict())
    prune_plain(net, ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_ratio_per_layer_respects_blocks_minimum_and_multiple():
    net = build_net()
    pruned, summary = prune_plain(net, ratio=0.5)
    assert not summary["exact"]  # non-zero filters were removed: an approximation
    kept = [r["kept"] for r in summary["layers"]]
    assert kept == [8, 8, 12, 12, 16, 16, 16]
    _, everything = prune_plain(net, ratio=1.0)
    # Never empty; blocks of 2 or 4 keep one channel each.
    assert [r["kept"] for r in everything["layers"]] == [1, 1, 1, 2, 2, 4, 4]
    _, rounded = prune_plain(net, ratio=0.4, multiple=8)
    assert all(r["kept"] % 8 == 0 for r in rounded["layers"])
    _, floor = prune_plain(net, ratio=1.0, min_channels=6)
    assert [r["kept"] for r in floor["layers"]] == [6, 6, 6, 6, 6, 8, 8]


def test_global_ratio_uses_one_threshold_for_all_layers():
    net = build_net()
    pruned, summary = prune_plain(net, ratio=0.3, scope="global")
    all_scores = torch.cat(channel_scores(net))
    t = summary["threshold"]
    assert (all_scores <= t).sum() == math.floor(0.3 * all_scores.numel())
    for rec in summary["layers"]:
        assert rec["max_removed_score"] <= t
    assert summary["channels_after"] < summary["channels_before"]
    x = torch.randn(1, 3, 32, 32)
    assert pruned(x).shape == (1, 7)


def test_l2_next_also_removes_unread_channels_exactly():
    net = build_net(seed=7).double()
    with torch.no_grad():
        net.features[0].conv.bias[0] = 0.8  # a live, varying channel ...
        net.features[1].conv.weight[:, 0] = 0  # ... that layer 1 never reads
    _, by_filter = prune_plain(net, threshold=0.0)
    assert 0 in by_filter["layers"][0]["source"]
    pruned, by_use = prune_plain(net, threshold=0.0, score="l2_next")
    assert 0 not in by_use["layers"][0]["source"] and by_use["exact"]
    x = torch.randn(2, 3, 33, 33, dtype=torch.float64)
    assert_equivalent(net, pruned, by_use, x, rtol=1e-12)


def test_normalized_scores_have_unit_mean_per_layer():
    for scores in channel_scores(build_net(), score="l2_next", normalize=True):
        assert float(scores.mean()) == pytest.approx(1.0)


@pytest.mark.parametrize("scope,size", [("global", 32), ("layer", 33)])
def test_prune_to_macs_meets_the_target_with_the_least_pruning(scope, size):
    net = build_net()
    pruned, summary = prune_to_macs(net, 0.4, size, scope=scope)
    before = count_macs(net, size)
    assert summary["macs_before"] == before
    # The bisection counts MACs from the plan; they must be what the built net has.
    assert summary["macs_after"] == count_macs(pruned, size) <= 0.6 * before
    if scope == "global":
        lower = [s for s in torch.cat(channel_scores(net)).unique().tolist()]
        lower = [s for s in lower if s < summary["threshold"]]
        if lower:
            less, _ = prune_plain(net, threshold=lower[-1])
            assert count_macs(less, size) > 0.6 * before
    with pytest.raises(PruningError, match="cannot remove"):
        prune_to_macs(net, 0.999, 32, scope=scope)


def test_prune_summary_reports_params_and_macs(net_and_pruned):
    net, pruned, _ = net_and_pruned
    out = prune_summary(net, pruned, 33)
    assert out == {
        "prune/params_before": count_params(net),
        "prune/params_after": count_params(pruned),
        "prune/macs_before": count_macs(net, 33),
        "prune/macs_after": count_macs(pruned, 33),
    }
    assert out["prune/macs_after"] < out["prune/macs_before"]


def test_bad_options_and_models_get_clear_errors():
    net = build_net()
    with pytest.raises(PruningError, match="exactly one"):
        prune_plain(net, threshold=0.0, ratio=0.5)
    with pytest.raises(PruningError, match="scope"):
        prune_plain(net, ratio=0.5, scope="net")
    with pytest.raises(PruningError, match="expected a PlainNet"):
        prune_plain(nn.Sequential(nn.Conv2d(3, 3, 3)), threshold=0.0)
    pooled = copy.deepcopy(net)
    pooled.features[1].pool = nn.AvgPool2d(2)
    with pytest.raises(PruningError, match="not a max-pool"):
        prune_plain(pooled, threshold=0.0)
    with pytest.raises(InputError, match="no PlainNet form"):
        as_plain_net(nn.Linear(2, 2))


@pytest.mark.gpu
def test_pruning_stays_on_the_model_device():
    net = build_net().double().cuda()
    pruned, summary = prune_plain(net, threshold=0.0)
    assert pruned.features[5].act.lower.is_cuda and pruned.head.fc.weight.is_cuda
    x = torch.randn(2, 3, 33, 33, dtype=torch.float64, device="cuda")
    assert_equivalent(net, pruned, summary, x, rtol=1e-12)


# ----------------------------------------------------------------------------- RepVGG


def _small(groups=1, gate=False, se=False):
    config = RepVGGConfig(
        depths=(2, 2, 2, 1), widths=(0.25, 0.25, 0.25, 0.5), groups=groups, gate=gate, se=se
    )
    return randomize_bn(config.build(num_classes=10)).eval()


def test_as_plain_net_copies_a_deploy_repvgg_exactly():
    model = _small()
    deploy = reparameterize(model)
    plain = as_plain_net(deploy)
    assert len(plain.features) == 8
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(plain(x), deploy(x))
        # A training-form model is re-parameterized on the way (and left untouched).
        assert torch.equal(as_plain_net(model)(x), deploy(x))
    assert not model.stem.deploy


def test_as_plain_net_refuses_squeeze_excitation():
    with pytest.raises(InputError, match="squeeze-excitation"):
        as_plain_net(_small(se=True))


@pytest.mark.parametrize("size", SIZES)
def test_grouped_repvgg_prunes_exactly(size):
    """RepVGG g4: odd blocks are groups=4 convs, so their producers drop one channel per group
    of 4 and get 4 carriers; the groups survive and the output does not change."""
    plain = as_plain_net(_small(groups=4)).double()
    gen = torch.Generator().manual_seed(5)
    expected_removed = []
    with torch.no_grad():
        for i, layer in enumerate(plain.features):
            conv = layer.conv
            nxt = plain.features[i + 1].conv.groups if i + 1 < len(plain.features) else 1
            blocks = math.lcm(conv.groups, nxt)
            per_block = conv.out_channels // blocks
            zero = [
                b * per_block + int(torch.randint(per_block, (1,), generator=gen))
                for b in range(blocks)
            ]
            zero.append((zero[0] + 1) % per_block)  # a second one in block 0 only
            conv.weight[zero] = 0
            conv.bias[zero] = torch.randn(len(zero), generator=gen, dtype=torch.float64)
            # With one block both go; with 4 blocks only one per block may go.
            expected_removed.append(2 if blocks == 1 else 4)
    assert expected_removed.count(4) >= 4
    pruned, summary = prune_plain(plain, threshold=0.0)
    assert [r["channels_before"] - r["kept"] for r in summary["layers"]] == expected_removed
    for old, new in zip(plain.features, pruned.features, strict=True):
        assert new.conv.groups == old.conv.groups
    assert any(r["carriers"] == 4 for r in summary["layers"])
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    assert_equivalent(plain, pruned, summary, x, rtol=1e-12)


# ----------------------------------------------------------------------------- gates


def test_gate_is_opt_in_and_keeps_the_old_state_dict_keys():
    plain_keys = set(create_model("repvgg_a0", num_classes=10).state_dict())
    gated = create_model("repvgg_a0", num_classes=10, gate=True)
    gate_keys = {k for k in gated.state_dict() if k.endswith(".gate")}
    assert len(gate_keys) == 22 and len(gate_parameters(gated)) == 22
    assert set(gated.state_dict()) - gate_keys == plain_keys
    assert all(bool((g == 1).all()) for g in gate_parameters(gated))


def test_unit_gates_change_nothing_and_zero_gates_make_dead_channels():
    model = _small(gate=True).double()
    ungated = _small().double()
    ungated.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.endswith(".gate")}, strict=True
    )
    x = torch.randn(2, 3, 33, 33, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(x), ungated(x))
        gen = torch.Generator().manual_seed(6)
        n_zero = []
        for g in gate_parameters(model):
            g.copy_(torch.rand(g.shape, generator=gen, dtype=torch.float64) + 0.5)
            zero = torch.rand(g.shape, generator=gen) < 0.3
            g[zero] = 0.0
            n_zero.append(int(zero.sum()))
        plain = as_plain_net(model)
        assert rel(model(x), plain(x)) < 1e-13  # the gate folds exactly (float64)
        pruned, summary = prune_plain(plain, threshold=0.0)
        # A zero gate zeroes filter and bias: the channel is dead, no carrier needed.
        assert [r["dead"] for r in summary["layers"]] == n_zero
        assert all(r["constant"] == 0 and r["carriers"] == 0 for r in summary["layers"])
        assert rel(model(x), pruned(x)) < 1e-12
    # The deploy form of a gated model loads into a gated deploy-form model.
    deploy = RepVGGConfig(depths=(2, 2, 2, 1), widths=(0.25, 0.25, 0.25, 0.5), gate=True).build(
        num_classes=10, deploy=True
    )
    deploy.load_state_dict(reparameterize(model).state_dict(), strict=True)


def test_gated_block_reparameterizes_in_place():
    block = randomize_bn(RepVGGBlock(8, 8, gate=True)).double().eval()
    with torch.no_grad():
        block.gate.uniform_(-1, 1)
        block.gate[3] = 0.0
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        assert block.gate is None and "gate" not in dict(block.named_parameters())
        assert rel(ref, block(x)) < 1e-13
    assert bool((block.reparam_conv.weight[3] == 0).all()) and block.reparam_conv.bias[3] == 0


def test_sparsity_penalty_is_the_l1_norm_of_the_gates():
    model = _small(gate=True)
    with torch.no_grad():
        for g in gate_parameters(model):
            g.uniform_(-1, 1)
    penalty = sparsity_penalty(model)
    expected = sum(float(g.detach().abs().sum()) for g in gate_parameters(model))
    assert math.isclose(float(penalty.detach()), expected, rel_tol=1e-6)
    penalty.backward()
    for g in gate_parameters(model):
        assert torch.equal(g.grad, torch.sign(g.detach()))
    with pytest.raises(InputError, match="gate=True"):
        sparsity_penalty(_small())


def test_shrink_gates_soft_thresholds_to_exact_zeros():
    model = _small(gate=True)
    with torch.no_grad():
        gate = gate_parameters(model)[0]
        gate[:4] = torch.tensor([0.05, -0.05, 0.3, -0.3])
    zeros = shrink_gates_(model, 0.1)
    values = gate.detach()
    assert values[:2].tolist() == [0.0, 0.0]  # exactly zero: those channels are now dead
    assert values[2:5].tolist() == pytest.approx([0.2, -0.2, 0.9])
    assert zeros == 2
