"""CIFAR-10/100 from the python-version pickles in a local folder (downloaded only on request)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torchvision import datasets
from torchvision.transforms import v2

from repvgg_lab.data.base import ImageDataModule, Splits, TransformSubset, stratified_split
from repvgg_lab.errors import DataRootError

log = logging.getLogger(__name__)


def _no_md5(files: list[list[str]]) -> list[list[str | None]]:
    """torchvision's (name, md5) list with the md5s dropped, so only presence is checked."""
    return [[name, None] for name, _ in files]


# Readers: torchvision's classes with per-file md5 checks reduced to "the file exists". Hashing
# 180 MB on every setup is slow, and it rejects small hand-made files in the same format.
# Downloads still go through the original classes, which check the archive's md5. Module-level
# classes (not made with type()) so datasets pickle into spawned workers.
class _CIFAR10Reader(datasets.CIFAR10):
    train_list = _no_md5(datasets.CIFAR10.train_list)
    test_list = _no_md5(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class _CIFAR100Reader(datasets.CIFAR100):
    train_list = _no_md5(datasets.CIFAR100.train_list)
    test_list = _no_md5(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


@dataclass(frozen=True)
class CIFARSpec:
    """What differs between CIFAR-10 and CIFAR-100: torchvision's classes and channel stats."""

    label: str
    dataset: type[datasets.CIFAR10]  # downloads (md5-checked)
    reader: type[datasets.CIFAR10]  # reads the extracted batches
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> list[str]:
        """The files torchvision reads from `dataset.base_folder`."""
        d = self.dataset
        return [name for name, _ in d.train_list + d.test_list] + [d.meta["filename"]]


# Per-channel mean/std of each official training set (the commonly quoted values).
CIFAR10 = CIFARSpec(
    "CIFAR-10",
    datasets.CIFAR10,
    _CIFAR10Reader,
    10,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)
CIFAR100 = CIFARSpec(
    "CIFAR-100",
    datasets.CIFAR100,
    _CIFAR100Reader,
    100,
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
)


class CIFARDataModule(ImageDataModule):
    """CIFAR from `root/<base_folder>`; a seeded stratified slice of the official train set is
    the validation split, the official test set is the test split.

    The files are read by torchvision's loader, which unpickles them (not `weights_only`-safe):
    point `root` only at dataset files you trust. A missing or malformed folder raises one
    `DataRootError` naming the expected files; `download=True` fetches them in `prepare_data`.
    """

    spec: ClassVar[CIFARSpec]
    in_channels = 3

    def __init__(
        self,
        root: str | Path,
        download: bool = False,
        img_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.download = download
        self.img_size = img_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.augment = augment
        self.num_classes = self.spec.num_classes

    @property
    def folder(self) -> Path:
        """Where torchvision keeps this dataset's batches."""
        return self.root / self.spec.dataset.base_folder

    def prepare_data(self) -> None:
        """Download and extract the archive (rank 0 only) when `download` is set."""
        if self.download:
            self.spec.dataset(str(self.root), train=True, download=True)

    def _error(self, problem: str) -> DataRootError:
        """The one-line error naming the layout this module expects."""
        hint = "" if self.download else "; pass data.download=true to fetch them"
        return DataRootError(
            f"data.root={self.root}: expected {self.spec.label} python batches at {self.folder} "
            f"({', '.join(self.spec.files)}); {problem}{hint}"
        )

    def _transform(self, train: bool) -> v2.Compose:
        """Random crop (pad 4) + flip for training, then resize if asked, then normalize."""
        steps: list = [v2.ToImage()]
        if train and self.augment:
            steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        if self.img_size != 32:
            steps.append(v2.Resize(self.img_size, antialias=True))
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.spec.mean, self.spec.std),
        ]
        return v2.Compose(steps)

    def _read(self, train: bool) -> datasets.CIFAR10:
        """One official split, with every way the files can be unreadable turned into one error."""
        try:
            data = self.spec.reader(str(self.root), train=train)
        except Exception as err:  # unpickling a foreign file can raise almost anything
            raise self._error(f"could not read them ({type(err).__name__}: {err})") from err
        labels = data.targets
        if len(labels) != len(data.data):
            raise self._error(f"{len(labels)} labels for {len(data.data)} images")
        if not all(0 <= t < self.num_classes for t in labels):
            raise self._error(f"labels outside 0..{self.num_classes - 1}")
        return data

    def _build_splits(self) -> Splits:
        """Check the folder, read both official splits, and split train into train/val."""
        missing = [f for f in self.spec.files if not (self.folder / f).is_file()]
        if missing and self.download:
            self.prepare_data()
            missing = [f for f in self.spec.files if not (self.folder / f).is_file()]
        if missing:
            raise self._error(f"missing {', '.join(missing)}")
        train, test = self._read(train=True), self._read(train=False)
        val_idx, train_idx = stratified_split(train.targets, (self.val_fraction,), self.split_seed)
        train_tf, eval_tf = self._transform(train=True), self._transform(train=False)
        return Splits(
            train=TransformSubset(train, train_idx, train_tf),
            val=TransformSubset(train, val_idx, eval_tf),
            test=TransformSubset(test, None, eval_tf),
            train_eval=TransformSubset(train, train_idx, eval_tf),
        )


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10 (10 classes) from `root/cifar-10-batches-py`."""

    spec = CIFAR10


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 (100 fine labels) from `root/cifar-100-python`."""

    spec = CIFAR100
