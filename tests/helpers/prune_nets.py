"""A small plain net with exactly dead and constant channels in every layer, and the checks
that a pruned copy computes the same features at every pixel (shared by the pruning tests)."""

import math

import torch
from torch import nn

from repvgg_lab.models.plain import PlainNet, activation_bounds

INF = math.inf


def _layer(cin, cout, k=3, s=1, p=1, g=1, act="ReLU", pool=None):
    return {
        "in_channels": cin,
        "out_channels": cout,
        "kernel_size": k,
        "stride": s,
        "padding": p,
        "groups": g,
        "act": act,
        "pool": pool,
    }


# Channels made removable in each layer of the test net: (channel, kind). "dead" outputs 0,
# "const" a non-zero constant; both get a zero filter.
REMOVABLE = {
    0: [(1, "dead"), (5, "dead"), (3, "const"), (8, "const"), (12, "const")],
    1: [(0, "dead"), (2, "const"), (9, "const")],
    2: [(0, "dead"), (13, "dead"), (2, "const"), (14, "const"), (20, "const")],
    # feeds a groups=2 conv: 2 per block of 12.
    3: [(7, "dead"), (3, "const"), (15, "const"), (22, "dead")],
    # groups=2 layer: 3 zero filters in block 0, 2 in block 1 -> only 2 per block may go.
    4: [(1, "dead"), (5, "const"), (9, "const"), (17, "dead"), (20, "const")],
    # feeds a groups=4 conv: 2 per block of 8.
    5: [(0, "dead"), (3, "const"), (9, "const"), (12, "dead")]
    + [(18, "dead"), (21, "const"), (27, "const"), (30, "dead")],
    6: [(2, "dead"), (10, "const"), (19, "dead"), (25, "const")],
}


def build_net(seed: int = 0) -> PlainNet:
    """7 layers covering every case: ReLU / ReLU6 / mixed clamp / identity activations, stride 2
    with zero padding, a padded max-pool after constant channels, a padding-free 1x1 consumer,
    grouped producers and consumers, and constant channels feeding the head."""
    spec = {
        "layers": [
            _layer(3, 16, s=2),
            _layer(16, 16, act="ReLU6", pool=[3, 2, 1]),
            _layer(16, 24, act="ChannelClamp"),
            _layer(24, 24, k=1, p=0, act="Identity"),
            _layer(24, 32, s=2, g=2),
            _layer(32, 32, act="ChannelClamp"),
            _layer(32, 32, g=4),
        ],
        "num_features": 32,
        "num_classes": 7,
    }
    net = PlainNet.from_spec(spec).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clamp2 = net.features[2].act  # ReLU, identity and [-1, 2] channels side by side
        clamp2.lower.copy_(torch.tensor([0.0] * 12 + [-INF] * 8 + [-1.0] * 4).view(1, -1, 1, 1))
        clamp2.upper.copy_(torch.tensor([INF] * 20 + [2.0] * 4).view(1, -1, 1, 1))
        clamp5 = net.features[5].act  # ReLU and ReLU6 channels: carriers get [1, 1] bounds
        clamp5.lower.zero_()
        clamp5.upper.copy_(torch.tensor([INF, 6.0] * 16).view(1, -1, 1, 1))
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
        for i, channels in REMOVABLE.items():
            conv = net.features[i].conv
            lower, upper = activation_bounds(net.features[i].act, conv.out_channels)
            for j, (c, kind) in enumerate(channels):
                conv.weight[c] = 0
                if kind == "dead":
                    conv.bias[c] = 0.0 if lower[c] < 0 else -0.5 - j * 0.1
                else:  # alternately saturating and in-range, negative where the clamp allows
                    value = 0.6 + 0.3 * j
                    conv.bias[c] = value if lower[c] == 0 or j % 2 else -value
                    if j % 3 == 0 and upper[c] < INF:
                        conv.bias[c] = upper[c] + 1.0
        # Layer 1, channel 4 reads only dead channels of layer 0: zero once those are gone.
        w1, b1 = net.features[1].conv.weight, net.features[1].conv.bias
        w1[4] = 0
        w1[4, [1, 5]] = torch.randn(2, 3, 3, generator=gen)
        b1[4] = 0.3
        # ... channel 6 reads only constant channels: varies at the borders, must stay.
        w1[6] = 0
        w1[6, [3, 8, 12]] = torch.randn(3, 3, 3, generator=gen)
    return net


def features(net: PlainNet, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for layer in net.features:
        x = layer(x)
        outs.append(x)
    return outs


def rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def assert_equivalent(net, pruned, summary, x, rtol):
    """Every kept channel of every layer equals the original at every pixel; carriers are 1."""
    with torch.no_grad():
        ref, out = features(net, x), features(pruned, x)
        for rec, r, o in zip(summary["layers"], ref, out, strict=True):
            src = torch.tensor(rec["source"])
            real = src >= 0
            assert o.shape[1] == src.numel()
            assert rel(r[:, src[real]], o[:, real]) <= rtol, f"layer {rec['layer']}"
            assert bool((o[:, ~real] == 1).all())  # carriers survive padding and max-pooling
        assert rel(net(x), pruned(x)) <= rtol
