"""Activation statistics and data-driven pruning: exactness kept for zero filters, the mean as
the replacement constant, the spread as the score."""

import pytest
import torch

from repvgg_lab.errors import InputError
from repvgg_lab.models.calibrate import activation_stats
from repvgg_lab.models.prune import PruningError, channel_scores, prune_net, prune_plain
from tests.helpers.prune_nets import assert_equivalent, build_net, features, rel


def _batches(sizes=(5, 3, 4), hw=20, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, hw, hw, generator=gen) for n in sizes]


def test_stats_equal_a_direct_computation_over_all_batches():
    net = build_net().train()
    batches = _batches()
    stats = activation_stats(net, [(x, torch.zeros(len(x))) for x in batches])
    assert net.training  # the mode is restored
    with torch.no_grad():
        outs = features(net.eval(), torch.cat(batches))
    assert len(stats) == len(outs)
    for s, y in zip(stats, outs, strict=True):
        y = y.double().transpose(0, 1).flatten(1)
        assert s.count == y.shape[1]
        torch.testing.assert_close(s.mean, y.mean(1), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(s.std, y.std(1, correction=0), rtol=1e-6, atol=1e-9)


def test_max_batches_limits_what_is_seen_and_empty_input_is_an_error():
    net = build_net()
    one = activation_stats(net, _batches(), max_batches=1)
    assert one[0].count == 5 * 10 * 10  # first batch only: 5 images, 10x10 after stride 2
    with pytest.raises(InputError, match="no calibration images"):
        activation_stats(net, [])
    with pytest.raises(InputError, match="NCHW"):
        activation_stats(net, [torch.zeros(3, 8, 8)])


@pytest.mark.parametrize("size", [32, 33])
def test_stats_leave_exact_pruning_exact(size):
    # Zero filters keep their exact constant act(bias), not a measured mean.
    net = build_net()
    stats = activation_stats(net, _batches(hw=size))
    pruned, summary = prune_plain(net, threshold=0.0, score="l2_next", stats=stats)
    _, reference = prune_plain(net, threshold=0.0, score="l2_next")
    assert summary["exact"]
    assert [r["source"] for r in summary["layers"]] == [r["source"] for r in reference["layers"]]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    assert_equivalent(net, pruned, summary, x, rtol=2e-6)


def test_act_at_threshold_zero_also_removes_what_never_varied_and_says_it_is_not_exact():
    # Some channels of the test net are constant on every calibration image (saturated or
    # negative pre-activations) without a zero filter: "act" scores them 0 and removes them,
    # but only the weights could prove that exact.
    net = build_net()
    stats = activation_stats(net, _batches())
    _, act = prune_plain(net, threshold=0.0, score="act", stats=stats)
    _, weights = prune_plain(net, threshold=0.0, score="l2_next")
    for i, layer in enumerate(act["layers"]):
        removed = set(range(layer["channels_before"])) - set(layer["source"])
        assert all(float(stats[i].std[c]) == 0.0 for c in removed), f"layer {i}"
    assert act["channels_after"] < weights["channels_after"]
    assert weights["exact"] and not act["exact"]


def test_a_channel_dead_on_the_data_but_not_in_its_weights_is_flagged():
    net = build_net()
    with torch.no_grad():
        conv = net.features[0].conv
        conv.weight[0] = 0.01
        conv.bias[0] = -100.0  # ReLU: 0 on any image in range, yet not provably 0
    stats = activation_stats(net, _batches())
    _, summary = prune_plain(net, ratio=0.0, score="act", stats=stats, scope="layer")
    assert summary["layers"][0]["exact"]  # ratio 0 removes nothing
    _, summary = prune_plain(net, threshold=0.0, score="act", stats=stats)
    assert 0 not in summary["layers"][0]["source"]
    assert not summary["layers"][0]["exact"]


def test_mean_replacement_beats_the_zero_filter_constant():
    # Removing the same varying channels, the measured mean is a better stand-in than
    # act(bias): the logits move less on fresh images from the same distribution.
    net = build_net()
    stats = activation_stats(net, _batches(sizes=(16, 16), seed=4))
    x = torch.randn(16, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = net(x)
        errors = {}
        for name, s in (("mean", stats), ("bias", None)):
            pruned, summary = prune_plain(net, ratio=0.3, score="l2_next", stats=s)
            assert not summary["exact"]
            errors[name] = rel(ref, pruned(x))
    assert errors["mean"] < 0.7 * errors["bias"], errors


def test_act_scores_are_spread_times_consumer_norm():
    net = build_net()
    stats = activation_stats(net, _batches())
    scores = channel_scores(net, "act", stats=stats)
    l2 = channel_scores(net, "l2")
    l2_next = channel_scores(net, "l2_next")
    for i, (s, a, b, st) in enumerate(zip(scores, l2, l2_next, stats, strict=True)):
        consumer = torch.where(a > 0, b / a.clamp_min(1e-300), torch.zeros_like(a))
        expected = torch.where(a == 0, torch.zeros_like(s), st.std * consumer)
        torch.testing.assert_close(s, expected, rtol=1e-9, atol=1e-12, msg=f"layer {i}")


def test_act_without_stats_or_with_foreign_stats_is_a_clear_error():
    net = build_net()
    with pytest.raises(PruningError, match="needs activation statistics"):
        prune_plain(net, threshold=0.0, score="act")
    stats = activation_stats(net, _batches())
    with pytest.raises(PruningError, match="do not match the net"):
        prune_plain(net, threshold=0.0, score="act", stats=stats[1:])


def test_prune_net_measures_stats_from_batches():
    net = build_net()
    batches = _batches()
    pruned, info = prune_net(
        net, 20, macs_reduction=0.3, score="act", normalize=True, batches=batches
    )
    direct, _ = prune_net(
        net,
        20,
        macs_reduction=0.3,
        score="act",
        normalize=True,
        stats=activation_stats(net, batches),
    )
    assert info["prune/macs_after"] <= 0.7 * info["prune/macs_before"]
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), direct(x), rtol=0, atol=0)
