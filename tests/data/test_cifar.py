"""CIFAR datamodules over tiny files in the official pickle format, and their folder errors."""

import pickle
from pathlib import Path

import pytest
import torch

from repvgg_lab.data import CIFAR10DataModule, CIFAR100DataModule, DataRootError


def _unnormalize(x: torch.Tensor, dm: CIFAR10DataModule) -> torch.Tensor:
    mean = torch.tensor(dm.spec.mean)[:, None, None]
    std = torch.tensor(dm.spec.std)[:, None, None]
    return (x * std + mean) * 255


def test_cifar10_loads_pixels_labels_and_splits(
    cifar10_root: Path, cifar_colour: tuple[int, int]
) -> None:
    g_value, b_value = cifar_colour
    dm = CIFAR10DataModule(root=cifar10_root, batch_size=4, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    assert (dm.num_classes, dm.in_channels, dm.img_size) == (10, 3, 32)
    s = dm.splits
    assert len(s.train) + len(s.val) == 40 and len(s.test) == 10
    assert 6 <= len(s.val) <= 14  # about a quarter, rounded per class
    assert set(s.train.indices).isdisjoint(s.val.indices)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Test images are not augmented: every pixel decodes back to the values written on disk.
    x, y = next(iter(CIFAR10DataModule(root=cifar10_root, batch_size=10).test_dataloader()))
    pixels = _unnormalize(x, dm)
    assert torch.equal(y, torch.arange(10))
    assert torch.allclose(pixels[:, 0], 10.0 * y[:, None, None].float(), atol=0.05)
    assert torch.allclose(pixels[:, 1], torch.full_like(pixels[:, 1], g_value), atol=0.05)
    assert torch.allclose(pixels[:, 2], torch.full_like(pixels[:, 2], b_value), atol=0.05)


def test_cifar10_split_and_fixed_batch_ignore_torch_seed(cifar10_root: Path) -> None:
    torch.manual_seed(1)
    a = CIFAR10DataModule(root=cifar10_root, num_workers=0)
    torch.manual_seed(2)
    b = CIFAR10DataModule(root=cifar10_root, num_workers=0)
    assert list(a.splits.val.indices) == list(b.splits.val.indices)
    xa, ya = a.fixed_batch("train", size=8)
    xb, yb = b.fixed_batch("train", size=8)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cifar10_resizes_when_asked(cifar10_root: Path) -> None:
    dm = CIFAR10DataModule(root=cifar10_root, img_size=48, batch_size=2, num_workers=0)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 48, 48) and dm.img_size == 48


def test_splits_pickle_for_spawned_workers(cifar10_root: Path) -> None:
    dm = CIFAR10DataModule(root=cifar10_root, num_workers=0, val_fraction=0.25)
    clone = pickle.loads(pickle.dumps(dm.splits.val))
    assert torch.equal(clone[0][0], dm.splits.val[0][0])


def test_cifar100_reads_fine_labels(cifar100_root: Path) -> None:
    dm = CIFAR100DataModule(root=cifar100_root, batch_size=6, num_workers=0)
    assert dm.num_classes == 100
    _, y = next(iter(dm.test_dataloader()))
    assert y.tolist() == [99, 1, 2, 3, 4, 98]
    assert len(dm.splits.train) + len(dm.splits.val) == 20


def _one_line_error(root: Path, cls: type = CIFAR10DataModule) -> str:
    with pytest.raises(DataRootError) as info:
        cls(root=root, num_workers=0).setup("fit")
    message = str(info.value)
    assert "\n" not in message and f"data.root={root}" in message
    return message


def test_missing_root_names_the_expected_files(tmp_path: Path) -> None:
    message = _one_line_error(tmp_path / "nowhere")
    assert "cifar-10-batches-py" in message and "data_batch_5" in message
    assert "test_batch" in message and "data.download=true" in message
    message = _one_line_error(tmp_path / "nowhere", CIFAR100DataModule)
    assert "cifar-100-python" in message and "meta" in message


def test_missing_file_is_named(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    message = _one_line_error(cifar10_root)
    assert "missing data_batch_3" in message


def test_garbage_file_is_reported_as_malformed(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    assert "could not read" in _one_line_error(cifar10_root)


def test_wrong_contents_are_reported(cifar10_root: Path) -> None:
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": [[1, 2, 3]], "labels": [0]}))  # not 3x32x32
    assert "could not read" in _one_line_error(cifar10_root)
    bad = pickle.loads((cifar10_root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    bad["labels"][0] = 10  # outside 0..9
    batch.write_bytes(pickle.dumps(bad))
    assert "labels outside 0..9" in _one_line_error(cifar10_root)
    bad["labels"] = bad["labels"][:-1]
    batch.write_bytes(pickle.dumps(bad))
    assert "39 labels for 40 images" in _one_line_error(cifar10_root)  # over all 5 batches
