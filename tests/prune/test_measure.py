"""`prune_and_measure`, the one pruning path of train.py and deploy.py: deterministic, leaves its
input alone, recalibrates lossy pruning only, and reports the `prune/*` metrics and latency."""

from __future__ import annotations

import copy

import pytest
import torch

from repvgg_lab.errors import PruningError
from repvgg_lab.prune import (
    PruneOptions,
    prune_and_measure,
    prune_net,
    prune_plain,
    prune_to_macs,
    recalibrate,
)
from repvgg_lab.utils import count_macs, count_params
from tests.helpers.prune_nets import build_net

SIZE = 20
LOSSY = PruneOptions(macs_reduction=0.5, score="l2_next", normalize=True, calibration_batches=2)


def _batches(n: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, SIZE, SIZE, generator=gen) for _ in range(n)]


def _same_net(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_identical_inputs_give_identical_pruning_and_the_input_is_untouched() -> None:
    net = build_net()
    before = copy.deepcopy(net)
    first = prune_and_measure(net, LOSSY, SIZE, _batches())
    second = prune_and_measure(copy.deepcopy(net), LOSSY, SIZE, _batches())
    assert _same_net(net, before)
    assert first.net is not net and _same_net(first.net, second.net)
    assert first.summary == second.summary and first.metrics == second.metrics
    assert first.summary["recalibrated"] and not first.exact
    assert first.net.features[0].conv.out_channels < net.features[0].conv.out_channels


def test_it_is_prune_to_macs_then_recalibrate_on_the_first_batches() -> None:
    net, batches = build_net(), _batches(3)
    result = prune_and_measure(net, LOSSY, SIZE, batches)
    pruned, summary = prune_to_macs(net, 0.5, SIZE, score="l2_next", normalize=True)
    sources = [layer["source"] for layer in summary["layers"]]
    expected = recalibrate(pruned, net, sources, batches[:2])  # calibration_batches=2
    assert _same_net(result.net, expected)
    assert not _same_net(result.net, pruned)  # the recalibration changed the weights


def test_metrics_count_the_nets_and_exact_pruning_is_not_recalibrated() -> None:
    net = build_net()
    options = PruneOptions(calibration_batches=2)  # threshold 0: exact
    result = prune_and_measure(net, options, SIZE, _batches())
    plain, _ = prune_plain(net, threshold=0.0)
    assert result.exact and not result.summary["recalibrated"]
    assert _same_net(result.net, plain)
    m = result.metrics
    assert m["prune/exact"] == 1.0 and m["prune/recalibrated"] == 0.0
    assert m["prune/params_before"] == count_params(net) > m["prune/params_after"]
    assert m["prune/macs_after"] == count_macs(result.net, SIZE) < count_macs(net, SIZE)
    assert "prune/latency_before_ms" not in m  # latency_rounds=0: not timed


def test_latency_is_timed_before_and_after_when_asked() -> None:
    options = PruneOptions(ratio=0.5, scope="layer", latency_rounds=2)
    m = prune_and_measure(build_net(), options, SIZE).metrics
    assert m["prune/latency_before_ms"] > 0 and m["prune/latency_after_ms"] > 0
    assert m["prune/speedup"] > 0


def test_calibration_batches_without_images_is_refused() -> None:
    with pytest.raises(PruningError, match="prune.calibration_batches=2 needs calibration"):
        prune_and_measure(build_net(), LOSSY, SIZE)


def test_prune_net_is_prune_and_measure_with_keywords() -> None:
    net, batches = build_net(), _batches()
    pruned, info = prune_net(
        net, SIZE, macs_reduction=0.5, score="l2_next", normalize=True, batches=batches[:2]
    )
    result = prune_and_measure(net, LOSSY, SIZE, batches)
    assert _same_net(pruned, result.net)
    assert info == {**result.summary, **result.metrics}
    # A ratio defaults to per-layer scope, as prune_plain does.
    _, by_ratio = prune_net(net, SIZE, ratio=0.3)
    assert by_ratio["scope"] == "layer"
