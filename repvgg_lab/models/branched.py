"""Train-time branches for any CNN: every eligible conv + BN pair of a user's net becomes a
`RepConv` that starts as the same function, and `reparameterize` returns the original architecture.

`add_branches(model, branches="dbb")` finds the pairs by tracing the net with torch.fx (a conv
whose only consumer is a BatchNorm2d, each called once, both children of the same module); a net
that cannot be traced is paired by registration order (a conv child followed by a BN child).
Offline (`mode="offline"`, DBB/ACNet/RepVGG): the conv's slot gets a `BranchedConv` (the original
conv + BN as its first kxk branch, the new branches with BN gamma = beta = 0, so the eval-mode net
computes the same function), the BN's slot a `FoldedBN` placeholder. After training, the fused
kernel goes back into an `nn.Conv2d` of the original configuration and the fused bias into the
BN, whose statistics are set so that it adds the bias and multiplies by exactly 1.0: one
rounding, as for any other fused conv.

Online (`mode="online"`, OREPA): the conv's slot gets a `BranchedConv` whose branches carry no BN,
each a kernel with a per-channel scale (the original kernel at scale 1, the new branches at 0,
unless `init_scales="orepa"`), summed into one kernel in every forward; the BN stays a real BN.
After training, the float64 sum goes back into the original conv, rounded once; the BN is the
net's own.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn

from repvgg_lab.models.geometry import (
    BRANCH_SETS,
    Geometry,
    branch_kinds,
    numeric_padding,
    usable_branches,
)
from repvgg_lab.models.online import check_mode
from repvgg_lab.models.repconv import RepConv

log = logging.getLogger(__name__)

# The `branches` values of the registry's ordinary architectures (small_cnn, tv_*).
BRANCH_CHOICES = ("none", *BRANCH_SETS)


class FoldedBN(nn.Identity):
    """Where a BN was: its work is done inside the `BranchedConv` before it (each branch has its
    own BN); `reparameterize` puts a BatchNorm2d back here."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum

    def extra_repr(self) -> str:
        return f"{self.num_features}, folded into the conv before it"


def _unit_var(eps: float, dtype: torch.dtype) -> torch.Tensor:
    """A variance v with v + eps == 1 exactly in `dtype`, so that BN's 1/sqrt(v + eps) is 1."""
    one = torch.ones((), dtype=dtype)
    var = one - torch.tensor(eps, dtype=dtype)
    for _ in range(8):
        total = var + torch.tensor(eps, dtype=dtype)
        if total == one:
            return var
        var = torch.nextafter(var, var + (one - total))
    raise ValueError(f"no variance gives var + eps == 1 for eps={eps} in {dtype}")


class BranchedConv(RepConv):
    """A user's conv + BN trained as parallel branches; its plain form is the user's own
    `nn.Conv2d` (same configuration, bias if it had one), plus, offline, the BN named `bn_name`
    beside it (online, that BN stays in the net: this module is the conv alone)."""

    OWN_BN = False

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        bn_name: str,
        branches: Sequence[str],
        *,
        mode: str = "offline",
        init_scales: str = "keep",
        inner_channels: int | None = None,
    ) -> None:
        g = Geometry.of(conv)
        super().__init__(
            g.in_channels,
            g.out_channels,
            g.kernel,
            g.stride,
            g.padding,
            g.dilation,
            g.groups,
            # "kxk" first: branch 0 is the original conv (+ BN offline) (`_start_as`).
            branches=tuple(sorted(branches, key=lambda kind: kind != "kxk")),
            mode=mode,
            init_scales=init_scales,
            inner_channels=inner_channels,
        )
        self.bn_name, self.conv_bias = bn_name, conv.bias is not None
        self.conv_padding = conv.padding  # "same" or "valid" stays a string in the plain conv
        if self.online and conv.bias is not None:
            self.bias = nn.Parameter(conv.bias.detach().clone())
        self.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            if self.online:
                self.branch_modules()[0][1].weight.copy_(conv.weight)
            else:
                self._start_as(conv, bn)
        if not conv.weight.requires_grad:  # a frozen layer stays frozen, branches included
            self.requires_grad_(False)

    def _start_as(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        """Branch 0 = the original conv + BN; every other branch adds exactly zero in eval."""
        for i, (_, module) in enumerate(self.branch_modules()):
            for b in module.modules():
                if isinstance(b, nn.BatchNorm2d):
                    b.eps, b.momentum = bn.eps, bn.momentum
            if i == 0:
                module.conv.weight.copy_(conv.weight)
                module.bn.load_state_dict(bn.state_dict())
                if conv.bias is not None:  # BN(conv(x) + c) = BN'(conv(x)) with mean' = mean - c
                    module.bn.running_mean.sub_(conv.bias)
            else:
                last = _last_bn(module)
                last.weight.zero_()
                last.bias.zero_()

    def _online_forward(self, x: Tensor) -> Tensor:
        """The user's conv with the online kernel (and its bias); its BN follows in the net."""
        return self._online_conv(x, getattr(self, "bias", None))

    def _post(self) -> tuple[Tensor | None, Tensor | None]:
        """Online: the conv's own bias, carried into the plain conv; offline: nothing."""
        return None, getattr(self, "bias", None) if self.online else None

    def _train_names(self) -> list[str]:
        return super()._train_names() + (["bias"] if hasattr(self, "bias") else [])

    def to_plain(self) -> nn.Conv2d:
        """The original conv, holding the fused kernel (and a zero bias if it had a bias)."""
        return self.plain_parts()[""]

    def plain_parts(self) -> dict[str, nn.Module]:
        """{"": the plain conv (`to_plain`)} and, offline, {bn_name: a BatchNorm2d beside it that
        adds the fused bias and multiplies by exactly 1.0}, from one fusion."""
        conv = self._fused_conv(self.conv_padding)
        if self.online:
            if not self.conv_bias:
                conv.bias = None
            return {"": conv}
        bn = copy.deepcopy(self.branch_modules()[0][1].bn)
        with torch.no_grad():
            bn.weight.fill_(1.0)
            bn.bias.copy_(conv.bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(_unit_var(bn.eps, bn.running_var.dtype))
            if self.conv_bias:
                conv.bias.zero_()
            else:
                conv.bias = None
        return {"": conv, self.bn_name: bn}


def _last_bn(branch: nn.Module) -> nn.BatchNorm2d:
    """The BN that ends a branch (a ConvBN's `bn`, a two-stage branch's `bn2`, an identity BN)."""
    if isinstance(branch, nn.BatchNorm2d):
        return branch
    return branch.bn2 if hasattr(branch, "bn2") else branch.bn


def _is_branched(module: nn.Module) -> bool:
    return callable(getattr(module, "to_plain", None))


class _Tracer(fx.Tracer):
    """Treats already re-parameterizable modules as leaves: their convs are branches."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_branched(m) or super().is_leaf_module(m, qualname)


def _traced_pairs(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """({conv: BN} where the conv's only consumer is the BN and each is called once,
    {conv: why it has no BN} for the other convs the trace saw)."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, why = {}, {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        users = list(node.users)
        user = users[0] if len(users) == 1 else None
        bn = user.target if user is not None and user.op == "call_module" else None
        if calls[node.target] > 1:
            why[node.target] = f"called {calls[node.target]} times in forward"
        elif len(users) > 1:
            why[node.target] = f"its output feeds {len(users)} consumers"
        elif bn is not None and isinstance(modules[bn], nn.BatchNorm2d) and calls[bn] > 1:
            why[node.target] = f"its BN {bn} is called {calls[bn]} times"
        elif (
            bn is not None and isinstance(modules[bn], nn.BatchNorm2d) and user.args[:1] == (node,)
        ):
            pairs[node.target] = bn
    return pairs, why


def _ordered_pairs(model: nn.Module) -> dict[str, str]:
    """{conv name: BN name} for each conv child registered right before a BN child."""
    pairs = {}

    def visit(prefix: str, module: nn.Module) -> None:
        children = [*module.named_children(), ("", None)]
        for (name, child), (next_name, nxt) in zip(children, children[1:], strict=False):
            if isinstance(child, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
                pairs[prefix + name] = prefix + next_name
            if not _is_branched(child):
                visit(f"{prefix}{name}.", child)

    visit("", model)
    return pairs


def conv_bn_pairs(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """({conv name: BN name} of every conv whose output goes straight into a BatchNorm2d,
    {conv name: why not} where the trace tells more than "no BN after it")."""
    try:
        return _traced_pairs(model)
    except Exception as err:  # any tracing failure means: fall back to registration order
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.info(
            "%s cannot be traced (%s); pairing each conv with the BN registered after it",
            type(model).__name__,
            reason[:120],
        )
        return _ordered_pairs(model), {}


def _conv_problem(conv: nn.Module, bn: nn.Module | None) -> str | None:
    """Why a conv (+ BN) cannot get branches, or None."""
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return "transposed conv"
    if not isinstance(conv, nn.Conv2d) or type(conv).forward is not nn.Conv2d.forward:
        return f"{type(conv).__name__} is not a plain Conv2d"
    if bn is None:
        return "not followed by a BatchNorm2d"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only zero padding fuses)"
    if numeric_padding(conv) is None:
        return f"asymmetric padding {conv.padding!r}"
    if not (bn.affine and bn.track_running_stats) or bn.num_features != conv.out_channels:
        return "its BN has no affine parameters or running statistics"
    return None


def _branch_target(net: nn.Module, name: str, bn_name: str | None, why: str | None) -> str | None:
    """Why the conv `name` (+ `bn_name`) is left alone, or None when it can get branches."""
    bn = net.get_submodule(bn_name) if bn_name else None
    problem = _conv_problem(net.get_submodule(name), bn)
    if bn is None and why is not None and problem == "not followed by a BatchNorm2d":
        problem = why
    if problem is None and name.rpartition(".")[0] != bn_name.rpartition(".")[0]:
        problem = f"its BN {bn_name} belongs to another module"
    return problem


def _check_branches(branches: str | Sequence[str]) -> None:
    """ValueError for an unknown branch set or kind, or an explicit list without "kxk" (the
    original conv + BN becomes the first kxk branch)."""
    if "kxk" not in branch_kinds(branches):
        raise ValueError(
            f"branches {list(branches)} has no 'kxk': the original conv + BN is the first kxk "
            "branch, so an explicit list for add_branches must name 'kxk'"
        )


def _replace(net: nn.Module, name: str, bn_name: str, kept: tuple[str, ...], **options) -> None:
    """Put a `BranchedConv` (`options` go to it) in the slot of conv `name`, and offline a
    `FoldedBN` in the slot of its BN `bn_name`."""
    parent, _, child = name.rpartition(".")
    holder, bn = net.get_submodule(parent), net.get_submodule(bn_name)
    conv, bn_child = net.get_submodule(name), bn_name.rpartition(".")[2]
    multiplier = options.pop("inner_multiplier", None)
    inner = multiplier * conv.in_channels if multiplier else None
    branched = BranchedConv(conv, bn, bn_child, kept, inner_channels=inner, **options)
    # The new modules take the BN's train/eval mode: an eval-mode net stays in eval mode.
    setattr(holder, child, branched.train(bn.training))
    if not branched.online:
        setattr(holder, bn_child, FoldedBN(bn).train(bn.training))


def add_branches(
    model: nn.Module,
    branches: str | Sequence[str] = "dbb",
    *,
    inplace: bool = False,
    mode: str = "offline",
    init_scales: str = "keep",
    inner_multiplier: int | None = None,
) -> nn.Module:
    """A copy of `model` (unless `inplace`) in which every conv followed by a BatchNorm2d is a
    `BranchedConv` with `branches` ("repvgg", "acb", "dbb" or a list of kinds, see
    `repvgg_lab.models.geometry`), computing the same eval-mode function as `model`.

    `mode` "offline" gives every branch its own BN; "online" trains scaled branches summed into
    one kernel before the net's own BN (see the module docstring), starting from the net's
    function unless `init_scales="orepa"` (OREPA's scales, for training from scratch).
    `inner_multiplier` sets the width inside DBB's 1x1 -> kxk branch to that many times the
    conv's input channels (default: DBB's, 2 for depthwise convs and 1 otherwise).
    Kinds a conv's geometry does not allow are left out for that conv; convs without a BN,
    transposed convs and other ineligible layers are left alone. Each decision is logged, one line
    per conv. `reparameterize` of the result returns `model`'s own architecture."""
    if isinstance(branches, str) and branches == "none":
        return model if inplace else copy.deepcopy(model)
    _check_branches(branches)
    check_mode(mode, init_scales)
    net = model if inplace else copy.deepcopy(model)
    pairs, why = conv_bn_pairs(net)
    inside = [n for n, m in net.named_modules() if n and _is_branched(m)]
    converted = 0
    for name, conv in list(net.named_modules()):
        if not isinstance(conv, nn.modules.conv._ConvNd):
            continue
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        problem = _branch_target(net, name, pairs.get(name), why.get(name))
        kept: tuple[str, ...] = ()
        if problem is None:
            kept, dropped = usable_branches(branches, Geometry.of(conv), strict=False)
            if len(kept) < 2:
                problem = "no branch to add: " + "; ".join(why for _, why in dropped)
        if problem is not None:
            log.info("%s: %s; left alone", name, problem)
            continue
        options = {"mode": mode, "init_scales": init_scales, "inner_multiplier": inner_multiplier}
        _replace(net, name, pairs[name], kept, **options)
        left_out = f" (left out: {', '.join(k for k, _ in dropped)})" if dropped else ""
        log.info("%s + %s: %s branches %s%s", name, pairs[name], mode, "+".join(kept), left_out)
        converted += 1
    if not converted:
        raise ValueError(_nothing_to_branch(model, inside))
    return net


def _nothing_to_branch(model: nn.Module, inside: list[str]) -> str:
    """The error of a net without a pair to branch; it may have its branches already (a net
    from add_branches, a registry RepVGG), whose convs are never branched again."""
    message = f"{type(model).__name__} has no conv + BatchNorm2d pair to branch"
    outer = [n for n in inside if not any(n.startswith(p + ".") for p in inside)]
    if not outer:
        return message
    return (
        f"{message} outside the {len(outer)} re-parameterizable modules it already has "
        f"({outer[0]}, ...), whose convs are not branched again"
    )


def with_branches(
    net: nn.Module,
    branches: str,
    deploy: bool = False,
    mode: str = "offline",
    init_scales: str = "keep",
) -> nn.Module:
    """`net` itself for its deploy form or `branches="none"`, else `add_branches(net, branches,
    mode=mode, init_scales=init_scales)` (in place: `net` is new). The registry's builders of
    ordinary architectures use this."""
    if deploy or branches == "none":
        return net
    return add_branches(net, branches, inplace=True, mode=mode, init_scales=init_scales)
