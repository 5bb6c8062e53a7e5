"""Shared test setup (deterministic torch on CPU, two threads like the CI machine) and builders for
tiny on-disk datasets in the real CIFAR pickle and ImageFolder formats."""

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: test tensors are tiny, and OpenMP barriers dominate on a shared CPU.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Every CIFAR image encodes its label: R = 10 * label, G = 100, B = 200 (channel order check).
G_VALUE, B_VALUE = 100, 200


def cifar_rows(labels: list[int]) -> np.ndarray:
    """(N, 3072) uint8 rows laid out like the official batches: R plane, G plane, B plane."""
    rows = np.empty((len(labels), 3, 1024), dtype=np.uint8)
    rows[:, 0] = (10 * np.asarray(labels))[:, None] % 256
    rows[:, 1], rows[:, 2] = G_VALUE, B_VALUE
    return rows.reshape(len(labels), 3072)


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """root/cifar-10-batches-py: 5 train batches of 8 images (40 in all), a test batch of 10."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(8)]
        _dump(folder / f"data_batch_{b}", {"data": cifar_rows(labels), "labels": labels})
    test_labels = list(range(10))
    _dump(folder / "test_batch", {"data": cifar_rows(test_labels), "labels": test_labels})
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    """root/cifar-100-python with 20 train images (fine labels up to 99) and 6 test images."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = [0, 99, 5, 25] * 5
    test = [99, 1, 2, 3, 4, 98]
    for name, labels in (("train", train), ("test", test)):
        coarse = [t // 5 for t in labels]
        data = {"data": cifar_rows(labels), "fine_labels": labels, "coarse_labels": coarse}
        _dump(folder / name, data)
    names = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []}
    _dump(folder / "meta", names)
    return tmp_path


def write_image_folder(root: Path, per_class: dict[str, int], size: int = 40) -> None:
    """root/<class>/<i>.png, each image filled with a class-specific colour."""
    for k, (cls, n) in enumerate(sorted(per_class.items())):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = (60 * k % 256, 40 * i % 256, 128)
            Image.new("RGB", (size, size), colour).save(root / cls / f"{i}.png")


@pytest.fixture
def cifar_colour() -> tuple[int, int]:
    """The constant (G, B) values of every tiny CIFAR image (R encodes the label)."""
    return G_VALUE, B_VALUE


@pytest.fixture
def image_folder_writer() -> Callable[..., None]:
    """`write_image_folder` for tests that add folders (conftest can't be imported)."""
    return write_image_folder


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    """root/train (3 classes x 4 images) and root/val (3 classes x 2 images) of 40x40 PNGs."""
    classes = ("ant", "bee", "cat")
    write_image_folder(tmp_path / "train", dict.fromkeys(classes, 4))
    write_image_folder(tmp_path / "val", dict.fromkeys(classes, 2))
    return tmp_path
