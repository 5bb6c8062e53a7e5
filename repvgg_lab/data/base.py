"""Shared datamodule machinery: split views, seeded stratified splits, loaders, fixed batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from repvgg_lab.data.sampling import SeededSampler, SeededSamples

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class TransformSubset(Dataset):
    """A view of `base` restricted to `indices` (all when None), with its own sample transform."""

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.base = base
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = self.base[i if self.indices is None else int(self.indices[i])]
        return (x if self.transform is None else self.transform(x)), int(y)


def stratified_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split indices per class into len(fractions) parts plus the remainder (last), seeded by
    `seed` alone (numpy, so torch's global seed never moves it); each part comes back sorted.

    Each class contributes round(fraction * class size), so a class too small for a share
    contributes nothing to that part.
    """
    labels = np.asarray(labels)
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions {tuple(fractions)} must be >= 0 and sum to less than 1")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for k, f in enumerate(fractions):
            n = int(round(f * len(idx)))
            parts[k].append(idx[start : start + n])
            start += n
        parts[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


@dataclass
class Splits:
    """Datasets of one datamodule; `train_eval` is the training split with eval transforms."""

    train: Dataset
    val: Dataset
    test: Dataset
    train_eval: Dataset


class ImageDataModule(pl.LightningDataModule):
    """Base class: subclasses build their `Splits` once; this class owns loaders and fixed batches.

    `batch_size` is the global batch; each rank gets batch_size / world_size.
    """

    num_classes: int
    in_channels: int
    img_size: int

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"batch_size={batch_size} must be >= 1, num_workers={num_workers} >= 0"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._splits: Splits | None = None
        # Seed of the training order and augmentation (None: the run's global seed).
        self.sample_seed: int | None = None
        self._train_sampler: SeededSampler | None = None
        self._resume: dict[str, int] | None = None

    def _build_splits(self) -> Splits:
        """Read the data and return the split datasets (called once)."""
        raise NotImplementedError

    @property
    def splits(self) -> Splits:
        """The split datasets, built on first use (so `fixed_batch` works without a Trainer)."""
        if self._splits is None:
            self._splits = self._build_splits()
            for name in SPLITS:
                if len(getattr(self._splits, name)) == 0:
                    log.warning("%s: the %s split is empty", type(self).__name__, name)
            log.info(
                "%s: train %d, val %d, test %d samples",
                type(self).__name__,
                len(self._splits.train),  # type: ignore[arg-type]
                len(self._splits.val),  # type: ignore[arg-type]
                len(self._splits.test),  # type: ignore[arg-type]
            )
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        """Build the splits once; later stages reuse them."""
        _ = self.splits

    @property
    def per_rank_batch_size(self) -> int:
        """The global batch divided over the trainer's ranks (the whole batch without a trainer)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by world_size={world}; "
                "batch_size is the global batch"
            )
        return self.batch_size // world

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """One loader recipe for every split: train shuffles and drops the ragged last batch
        (unless the dataset is smaller than one batch, which would leave no batch at all).

        The training order and augmentation come from a `SeededSampler`, functions of (seed,
        epoch) alone, so a run resumed from a checkpoint sees what an uninterrupted one would; the
        position in the epoch goes into checkpoints (`state_dict`), so a mid-epoch one resumes
        at the next batch."""
        batch = self.per_rank_batch_size
        if not train:
            return DataLoader(dataset, batch_size=batch, **self._loader_options())
        if self.sample_seed is None:  # the global seed of the run (seed_everything's)
            self.sample_seed = torch.initial_seed()
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = SeededSampler(dataset, self.sample_seed, num_replicas=world, rank=rank)
        if self._resume is not None:  # from a checkpoint (load_state_dict)
            sampler.resume_at = (self._resume["epoch"], self._resume["batches"] * batch)
            self._resume = None
        self._train_sampler = sampler
        return DataLoader(
            SeededSamples(dataset),
            batch_size=batch,
            sampler=sampler,
            drop_last=len(dataset) >= batch,  # type: ignore[arg-type]
            **self._loader_options(),
        )

    def _loader_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }

    def state_dict(self) -> dict[str, int]:
        """Where training is in its epoch (goes into checkpoints): the epoch and how many of its
        batches the training loop has consumed (the loader cannot tell: it prefetches)."""
        if self._train_sampler is None or self.trainer is None:
            return {}
        consumed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self._train_sampler.epoch, "batches": int(consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next training loader skips the batches of that epoch already trained on.
        (Lightning restores a datamodule before it builds the loaders.)"""
        self._resume = dict(state) if state else None

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader(self.splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.splits.val, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self.splits.test, train=False)

    def _fixed(self, split: str, size: int | None) -> tuple[Dataset, np.ndarray]:
        """The eval-transformed dataset of `split` and the `size` evenly spaced indices that
        `fixed_batch` and `fixed_loader` read (all of them for None)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected one of {SPLITS}")
        splits = self.splits
        dataset = splits.train_eval if split == "train" else getattr(splits, split)
        n = len(dataset)
        if n == 0:
            raise ValueError(f"split={split!r} is empty")
        size = n if size is None else size
        if size > n:
            log.warning("%s has %d samples, fewer than the %d asked for", split, n, size)
        picks = np.unique(np.linspace(0, n - 1, num=min(size, n)).round().astype(np.int64))
        return dataset, picks

    def fixed_batch(self, split: str = "val", size: int | None = 64) -> tuple[Tensor, Tensor]:
        """The same `size` eval-transformed samples of `split` on every call: evenly spaced
        indices, so class-sorted folders still give a batch that spans the classes. `size`
        None: the whole split (held in memory: for whole splits use `fixed_loader`)."""
        dataset, picks = self._fixed(split, size)
        samples = [dataset[int(i)] for i in picks]
        x = torch.stack([s[0] for s in samples])
        y = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
        return x, y

    def fixed_loader(
        self,
        split: str = "val",
        size: int | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> DataLoader:
        """The samples of `fixed_batch(split, size)`, in the same order, as a DataLoader of
        `batch_size` batches (default: the module's) decoded by `num_workers` workers (default:
        the module's): a whole split streamed instead of held."""
        dataset, picks = self._fixed(split, size)
        subset = dataset if len(picks) == len(dataset) else Subset(dataset, picks.tolist())
        options = self._loader_options()
        if num_workers is not None:
            options["num_workers"] = num_workers
        options["persistent_workers"] = False  # read once; workers end with the pass
        return DataLoader(subset, batch_size=batch_size or self.batch_size, **options)

    def same_samples(self, split: str, other: str) -> bool:
        """True when two splits are one dataset (e.g. an ImageNet folder without test/, whose
        test split is val/): measure it once and report it for both."""
        return getattr(self.splits, split) is getattr(self.splits, other)
