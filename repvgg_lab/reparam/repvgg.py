"""RepVGG-style branches composed into one kxk conv with bias: RepVGG's (kxk+BN, 1x1+BN,
identity BN) and QARepVGG's (kxk+BN, plain 1x1, plain identity, then one BN on the sum).
Both are configurations of the general `fuse`."""

from __future__ import annotations

import torch
from torch import Tensor

from repvgg_lab.reparam.bn import BNStats
from repvgg_lab.reparam.fuse import Term, bn_term, fuse


def _centred_terms(
    k3: Tensor, bn3: BNStats, k1: Tensor | None, bn1: BNStats | None, identity: Term | None
) -> list[Term]:
    """The kxk term, then the 1x1 and identity terms at its centre tap (checked shapes)."""
    _, _, kh, kw = k3.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"expected an odd square kernel, got {kh}x{kw}")
    c = (kh // 2, kh // 2)
    terms = [bn_term(k3, bn3)]
    if k1 is not None:
        if k1.shape != (k3.shape[0], k3.shape[1], 1, 1):
            raise ValueError(f"1x1 kernel {tuple(k1.shape)} does not match {tuple(k3.shape)}")
        terms.append(bn_term(k1, bn1, c))
    if identity is not None:
        terms.append(identity._replace(offset=c))
    return terms


def repvgg_kernel_bias(
    k3: Tensor,
    bn3: BNStats,
    k1: Tensor | None = None,
    bn1: BNStats | None = None,
    bn_id: BNStats | None = None,
    *,
    dtype: torch.dtype | None = None,
    out: tuple[Tensor, Tensor] | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Equivalent (kernel, bias) of BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(x), times `scale`.

    Works for any `groups` (read from the kernel shapes), computes in float64 and rounds once to
    `dtype` (default: the dtype of `k3`). `out` receives the result in place when given.
    `scale` (one value per output channel, e.g. a learnable gate on the branch sum) multiplies
    both kernel and bias, so a zero scale gives an exactly zero filter *and* bias.
    Differentiable when called with grad enabled.
    """
    if k1 is not None and bn1 is None:
        raise ValueError(
            f"1x1 kernel {tuple(k1.shape)} does not match bn1=None (a 1x1 branch without "
            "its own BN is QARepVGG's: qarepvgg_kernel_bias)"
        )
    identity = bn_term(None, bn_id) if bn_id is not None else None
    terms = _centred_terms(k3, bn3, k1, bn1, identity)
    return fuse(terms, tuple(k3.shape), scale=scale, dtype=dtype or k3.dtype, out=out)


def qarepvgg_kernel_bias(
    k3: Tensor,
    bn3: BNStats,
    k1: Tensor | None,
    bn: BNStats,
    *,
    identity: bool,
    dtype: torch.dtype | None = None,
    out: tuple[Tensor, Tensor] | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Equivalent (kernel, bias) of BN(BN3(conv_kxk(x)) + conv_1x1(x) + x), times `scale`.

    The QARepVGG block: only the kxk branch has its own BN, the 1x1 conv (if any) and the
    identity (if `identity`) are added unnormalised, and `bn` acts on the sum. With (s, t) the
    scale and shift of `bn`: K = s * (K3' + pad(K1) + I), b = s * b3' + t. Same contract as
    `repvgg_kernel_bias` (any groups, float64 rounded once, `out`, `scale`, differentiable).
    """
    terms = _centred_terms(k3, bn3, k1, None, Term(None, None, None) if identity else None)
    s, t = bn.scale_shift()
    if scale is not None:
        if scale.shape != s.shape:
            raise ValueError(f"scale {tuple(scale.shape)} does not match {s.shape[0]} channels")
        s, t = s * scale.to(s.dtype), t * scale.to(s.dtype)
    return fuse(terms, tuple(k3.shape), scale=s, shift=t, dtype=dtype or k3.dtype, out=out)
