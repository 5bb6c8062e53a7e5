"""The training order and each sample's random crop are functions of (seed, epoch) alone."""

from __future__ import annotations

import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.data.sampling import SeededSampler, SeededSamples


def _epoch(sampler: SeededSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_and_sample_seeds_depend_on_seed_and_epoch_only() -> None:
    data = list(range(50))
    a, b = SeededSampler(data, seed=3), SeededSampler(data, seed=3)
    torch.manual_seed(123)  # the global RNG plays no part
    assert _epoch(a, 2) == _epoch(b, 2)
    first, second = _epoch(a, 0), _epoch(a, 1)
    assert sorted(i for i, _ in first) == data  # every sample once per epoch
    assert [i for i, _ in first] != [i for i, _ in second]  # a new order each epoch ...
    seeds = [dict(e) for e in (first, second)]
    assert all(seeds[0][i] != seeds[1][i] for i in data)  # ... and new crops
    assert _epoch(SeededSampler(data, seed=4), 0) != first


def test_ranks_share_an_epoch_without_overlap() -> None:
    data = list(range(20))
    ranks = [SeededSampler(data, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [_epoch(s, 5) for s in ranks]
    assert sorted(i for share in shares for i, _ in share) == data
    whole = dict(_epoch(SeededSampler(data, seed=0), 5))
    assert all(whole[i] == s for share in shares for i, s in share)  # one seed per sample


def test_a_sample_is_its_seed_s_crop_and_leaves_the_global_rng_alone() -> None:
    dm = DigitsDataModule(img_size=16, augment=True)
    samples = SeededSamples(dm.splits.train)
    state = torch.get_rng_state()
    same = [samples[(7, 11)][0] for _ in range(2)]
    assert torch.equal(*same)
    assert torch.equal(torch.get_rng_state(), state)
    crops = {samples[(7, s)][0].numpy().tobytes() for s in range(12)}
    assert len(crops) > 1  # the seed picks the shift


def test_a_sampler_resumed_mid_epoch_yields_each_remaining_sample_once() -> None:
    data = list(range(40))
    first = SeededSampler(data, seed=1)
    first.set_epoch(2)
    seen = list(first)[:12]
    second = SeededSampler(data, seed=1)
    second.resume_at = (2, 12)
    second.set_epoch(2)
    rest = list(second)
    assert sorted(i for i, _ in seen + rest) == data  # each sample of the epoch exactly once
    assert seen + rest == list(first)  # in the same order, with the same crops
    second.set_epoch(3)
    assert len(list(second)) == 40  # the next epoch starts at its beginning


def test_the_datamodule_resumes_its_training_loader_where_the_checkpoint_was() -> None:
    dm = DigitsDataModule(img_size=16, batch_size=32)
    dm.load_state_dict({"epoch": 4, "batches": 5})
    sampler = dm.train_dataloader().sampler
    assert sampler.resume_at == (4, 5 * 32)
    assert dm.train_dataloader().sampler.resume_at is None  # once
