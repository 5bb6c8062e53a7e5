"""`fuse` and `compose` in a work dtype other than float64 (an online block's forward): the same
sum, rounded at every step instead of once, and differentiable (gradcheck in float64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repvgg_lab.reparam.fuse import Term, average_kernel, compose, fuse


def _terms(out: int, cin: int, groups: int, gen: torch.Generator, dtype: torch.dtype):
    """A kxk, a centred 1x1, an identity and a composed 1x1 -> kxk term, all scaled."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    per = cin // groups
    first = Term(rand(2 * cin, per, 1, 1), None, None)
    second = Term(rand(out, 2 * cin // groups, 3, 3), rand(out), None)
    terms = [
        Term(rand(out, per, 3, 3), rand(out), None),
        Term(rand(out, per, 1, 1), rand(out), None, (1, 1)),
    ]
    if out == cin:
        terms.append(Term(None, rand(out), None, (1, 1)))
    return terms, first, second


@settings(max_examples=25, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]),
    out_per_group=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_the_work_dtype_sum_is_the_float64_sum_rounded(groups, out_per_group, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    cin, out = 4, groups * out_per_group
    terms, first, second = _terms(out, cin, groups, gen, dtype)
    composed = compose(first, second, groups, work=dtype)
    assert composed.kernel.dtype == dtype
    exact = fuse([*terms, compose(first, second, groups)], (out, cin // groups, 3, 3))[0]
    fast = fuse([*terms, composed], (out, cin // groups, 3, 3), dtype=dtype, work=dtype)[0]
    assert fast.dtype == dtype
    # A few roundings of the work dtype per tap: over 2,700 cases (seeds 0-299, every groups
    # and width here) the worst was 1.9 eps x the largest tap; 8 leaves a 4x margin.
    eps = torch.finfo(dtype).eps
    scale = exact.double().abs().max()
    assert (fast.double() - exact.double()).abs().max() <= 8 * eps * scale


def test_fuse_and_compose_are_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    terms, first, second = _terms(4, 4, 2, gen, torch.float64)
    leaves = [t.requires_grad_() for t in (terms[0].kernel, terms[1].scale, terms[2].scale)]
    leaves += [first.kernel.requires_grad_(), second.kernel.requires_grad_()]
    pool = average_kernel(4, 2, (3, 3))

    def kernel(k0, s1, s2, f, k2):
        parts = [
            Term(k0, terms[0].scale, None),
            Term(terms[1].kernel, s1, None, (1, 1)),
            Term(None, s2, None, (1, 1)),
            compose(Term(f, None, None), Term(k2, second.scale, None), 2),
            compose(Term(f[:4], None, None), Term(pool, s2, None), 2),
        ]
        return fuse(parts, (4, 2, 3, 3), work=torch.float64)[0]

    assert torch.autograd.gradcheck(kernel, leaves)
