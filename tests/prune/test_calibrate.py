"""Recalibration after lossy pruning: it restores every kept channel's pre-activation mean and
spread layer by layer, leaves carriers and exact pruning alone, and reduces the error."""

import pytest
import torch

from repvgg_lab.errors import InputError
from repvgg_lab.prune import prune_net, prune_plain
from repvgg_lab.prune.calibrate import recalibrate
from tests.helpers.prune_nets import build_net, features, rel


def _batches(sizes=(6, 5, 5), hw=20, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, hw, hw, generator=gen) for n in sizes]


def _sources(summary):
    return [layer["source"] for layer in summary["layers"]]


def _preactivations(net, x):
    """Every layer's conv output (before the activation) for input x."""
    outs = []
    for layer in net.features:
        outs.append(layer.conv(x))
        x = layer(x)
    return outs


def _moments(z):
    z = z.double().transpose(0, 1).flatten(1)
    return z.mean(1), z.std(1, correction=0)


@pytest.fixture(scope="module")
def lossy():
    net = build_net()
    pruned, summary = prune_plain(net, ratio=0.3, score="l2_next")
    assert not summary["exact"]
    return net, pruned, summary


def test_kept_channels_get_their_original_mean_and_spread_back(lossy):
    net, pruned, summary = lossy
    batches = _batches()
    fixed = recalibrate(pruned, net, _sources(summary), [(x, None) for x in batches])
    x = torch.cat(batches)
    with torch.no_grad():
        want, before, after = (_preactivations(n, x) for n in (net, pruned, fixed))
    drifted = 0
    for i, src in enumerate(_sources(summary)):
        src = torch.tensor(src)
        real = src >= 0
        (m0, s0), (m1, s1) = _moments(want[i][:, src[real]]), _moments(after[i][:, real])
        torch.testing.assert_close(m1, m0, rtol=1e-4, atol=1e-4, msg=f"layer {i}")
        torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4, msg=f"layer {i}")
        mb, _ = _moments(before[i][:, real])
        drifted += not torch.allclose(mb, m0, rtol=1e-3, atol=1e-3)
    assert drifted >= 3  # pruning had moved the statistics of later layers


def test_carriers_stay_exactly_one(lossy):
    net, pruned, summary = lossy
    fixed = recalibrate(pruned, net, _sources(summary), _batches())
    assert any(-1 in s for s in _sources(summary))
    with torch.no_grad():
        outs = features(fixed, torch.randn(2, 3, 21, 21))
        for rec, y in zip(summary["layers"], outs, strict=True):
            carrier = torch.tensor(rec["source"]) < 0
            assert bool((y[:, carrier] == 1).all())


def test_recalibration_reduces_the_error_on_fresh_images(lossy):
    net, pruned, summary = lossy
    fixed = recalibrate(pruned, net, _sources(summary), _batches(sizes=(16, 16)))
    x = torch.randn(32, 3, 20, 20, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = net(x)
        assert rel(ref, fixed(x)) < 0.7 * rel(ref, pruned(x))


def test_an_unpruned_copy_is_left_as_it_is():
    net = build_net()
    identity = [list(range(layer.conv.out_channels)) for layer in net.features]
    same = recalibrate(net, net, identity, _batches())
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        assert rel(net(x), same(x)) < 1e-5


def test_prune_net_recalibrates_lossy_pruning_only():
    net, batches = build_net(), _batches()
    exact, info = prune_net(net, 20, threshold=0.0, batches=batches)
    plain_exact, _ = prune_net(net, 20, threshold=0.0)
    assert info["exact"] and not info["recalibrated"]
    net.train()
    lossy, info = prune_net(net, 20, ratio=0.3, score="l2_next", batches=batches, max_batches=2)
    assert net.training  # the source keeps its mode
    direct, summary = prune_plain(net, ratio=0.3, score="l2_next")
    direct = recalibrate(direct, net, _sources(summary), batches[:2])
    assert info["recalibrated"]
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(exact(x), plain_exact(x))
        assert torch.equal(lossy(x), direct(x))


def test_bad_calibration_input_is_a_clear_error(lossy):
    net, pruned, summary = lossy
    with pytest.raises(InputError, match="no calibration images"):
        recalibrate(pruned, net, _sources(summary), [])
    with pytest.raises(InputError, match="NCHW"):
        recalibrate(pruned, net, _sources(summary), [torch.zeros(3, 8, 8)])
    with pytest.raises(InputError, match="different depths"):
        recalibrate(pruned, net, _sources(summary)[1:], _batches())
