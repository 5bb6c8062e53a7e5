"""DigitsDataModule: shapes, normalization, seed-independent stratified splits, fixed batches."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from repvgg_lab.data import DigitsDataModule


def _indices(dm: DigitsDataModule) -> dict[str, np.ndarray]:
    s = dm.splits
    return {"train": s.train.indices, "val": s.val.indices, "test": s.test.indices}


def test_batches_have_the_requested_shape_dtype_and_channels() -> None:
    dm = DigitsDataModule(img_size=16, batch_size=32, in_channels=1)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.min() >= 0 and y.max() < dm.num_classes == 10
    assert (dm.in_channels, dm.img_size) == (1, 16)


def test_channels_are_replicated_copies_of_one_grey_image() -> None:
    x, _ = DigitsDataModule(in_channels=3).fixed_batch("val", size=8)
    assert x.shape == (8, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x[:, 0].std() > 0.5  # real images, not a constant


def test_training_split_is_normalized_with_its_own_statistics() -> None:
    dm = DigitsDataModule(augment=False)
    x, _ = dm.fixed_batch("train", size=10_000)  # the whole un-augmented training split
    assert x.shape[0] == len(dm.splits.train)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    raw = x * dm.std + dm.mean  # back to [0, 1] pixel scale
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5 and raw.max() > 0.9


def test_split_is_disjoint_complete_and_independent_of_torch_seed() -> None:
    torch.manual_seed(1)
    first = _indices(DigitsDataModule())
    torch.manual_seed(12345)
    second = _indices(DigitsDataModule())
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    everything = np.concatenate(list(first.values()))
    assert len(everything) == len(np.unique(everything)) == 1797
    other = _indices(DigitsDataModule(split_seed=1))
    assert not np.array_equal(first["val"], other["val"])


def test_split_is_stratified() -> None:
    labels = load_digits().target
    idx = _indices(DigitsDataModule(val_fraction=0.2, test_fraction=0.1))
    for c in range(10):
        in_class = int((labels == c).sum())
        assert abs(int((labels[idx["val"]] == c).sum()) - 0.2 * in_class) <= 0.5
        assert abs(int((labels[idx["test"]] == c).sum()) - 0.1 * in_class) <= 0.5


def test_fixed_batch_is_the_same_every_time_and_spans_classes() -> None:
    torch.manual_seed(3)
    x1, y1 = DigitsDataModule().fixed_batch("val", size=64)
    torch.manual_seed(4)
    dm = DigitsDataModule()
    next(iter(dm.train_dataloader()))  # consuming random numbers must not matter
    x2, y2 = dm.fixed_batch("val", size=64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(y1.unique()) == 10
    xt1, _ = dm.fixed_batch("train", size=16)
    xt2, _ = dm.fixed_batch("train", size=16)
    assert torch.equal(xt1, xt2)  # the train fixed batch skips augmentation
    assert not torch.equal(xt1, dm.fixed_batch("test", size=16)[0])


def test_augmentation_is_a_small_shift_of_the_eval_image() -> None:
    dm = DigitsDataModule(img_size=32, augment=True)
    clean = dm.splits.train_eval[0][0][0]
    pad = 32 // 8
    padded = torch.nn.functional.pad(clean[None, None], (pad,) * 4, mode="replicate")[0, 0]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        shifted = dm.splits.train[0][0][0]
        matches = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if torch.equal(shifted, padded[i : i + 32, j : j + 32])
        ]
        assert matches, "augmented image is not a shift of the clean one"
        seen.add(matches[0])
    assert len(seen) > 1
    torch.manual_seed(0)
    no_aug = DigitsDataModule(augment=False)
    assert torch.equal(no_aug.splits.train[0][0], no_aug.splits.train_eval[0][0])


def test_train_loader_shuffles_and_drops_last_eval_loaders_do_not() -> None:
    dm = DigitsDataModule(batch_size=100)
    n_train, n_val = len(dm.splits.train), len(dm.splits.val)
    assert len(dm.train_dataloader()) == n_train // 100
    val_labels = torch.cat([y for _, y in dm.val_dataloader()])
    assert len(val_labels) == n_val  # ragged last batch kept
    assert torch.equal(val_labels, dm.fixed_batch("val", size=n_val)[1])  # fixed order
    torch.manual_seed(0)  # the run's seed is the shuffle's: a new epoch or seed, a new order
    loader = dm.train_dataloader()
    a = next(iter(loader))[1]
    loader.sampler.set_epoch(1)
    b = next(iter(loader))[1]
    torch.manual_seed(1)
    c = next(iter(DigitsDataModule(batch_size=100).train_dataloader()))[1]
    assert not torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [{"val_fraction": 0.0}, {"val_fraction": 0.5, "test_fraction": 0.5}, {"img_size": 4}],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DigitsDataModule(**kwargs)
