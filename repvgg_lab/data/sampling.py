"""Training order and augmentation randomness as functions of (seed, epoch) alone.

A resumed run must see the epochs an uninterrupted run would: the same sample order and the same
random crops. Neither can depend on the global RNG's state at the time an epoch starts (that state
is not in a checkpoint), so the sampler derives the order from (seed, epoch) and hands every index
out with the seed of that sample's random transforms, which the dataset wrapper applies in
whichever process loads the sample (main process or a worker).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class SeededSampler(DistributedSampler):
    """Shuffled (index, sample seed) pairs of this rank's share of `dataset`.

    A `DistributedSampler` (so Lightning keeps it as it is in DDP and calls `set_epoch` on it):
    the order is its (seed, epoch) shuffle, padded and sharded over `num_replicas` the same way.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed % 2**63
        )
        # (epoch, samples of it already seen): the next pass over that epoch skips them.
        self.resume_at: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        n = len(self.dataset)  # type: ignore[arg-type]
        seeds = seeded_rng(self.seed, self.epoch).integers(0, 2**63 - 1, size=n, dtype=np.int64)
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            skip = self.resume_at[1]
        self.resume_at = None  # once: the next epochs start at their beginning
        for k, i in enumerate(super().__iter__()):
            if k >= skip:
                yield i, int(seeds[i])


class SeededSamples(Dataset):
    """`dataset[i]` for a key (i, seed), with torch's RNG seeded by `seed` while it loads.

    The global RNG is forked, so loading a sample leaves the caller's RNG state untouched."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator that is a function of (seed, *keys) alone, e.g. (seed, epoch)."""
    return np.random.default_rng([seed % 2**63, *keys])


def reseed_globals(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators (what mixup and dropout draw from)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
