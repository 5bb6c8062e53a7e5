"""ImageNet-style ImageFolder trees (root/train, root/val, optional root/test), timm transforms."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from PIL import Image
from torch import Tensor
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from repvgg_lab.data.base import ImageDataModule, Splits, TransformSubset
from repvgg_lab.errors import DataRootError

log = logging.getLogger(__name__)

# The usual ImageNet channel statistics (the same values timm uses as its defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = "root/train/<class>/*.jpg and root/val/<class>/*.jpg (optional root/test/<class>/*.jpg)"


class ImageNetDataModule(ImageDataModule):
    """Any ImageFolder tree laid out like ImageNet; `num_classes` is the number of class folders
    in root/train. Training uses timm's random-resized-crop pipeline, evaluation resizes to
    img_size / crop_pct and centre-crops img_size. `test_split` names the folder behind the
    test split: "test", "val", or "auto" (root/test when it exists, else root/val, said in the
    log, since test/acc then measures the validation images)."""

    in_channels = 3

    def __init__(
        self,
        root: str | Path,
        img_size: int = 224,
        batch_size: int = 256,
        num_workers: int = 8,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
        color_jitter: float = 0.4,
        auto_augment: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        test_split: str = "auto",
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct={crop_pct} must be in (0, 1]")
        if test_split not in ("auto", "test", "val"):
            raise ValueError(f"test_split={test_split!r} must be one of auto, test, val")
        self.test_split = test_split
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.img_size = img_size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.color_jitter = color_jitter
        self.auto_augment = auto_augment
        self.mean, self.std = tuple(mean), tuple(std)

    def _error(self, problem: str) -> DataRootError:
        """The one-line error naming the layout this module expects."""
        return DataRootError(f"data.root={self.root}: expected {LAYOUT}; {problem}")

    @cached_property
    def classes(self) -> list[str]:
        """Class folder names of root/train, sorted (their order gives the label indices)."""
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise self._error(f"{self.root / split} is not a directory")
        try:
            return find_classes(self.root / "train")[0]
        except FileNotFoundError as err:
            raise self._error(f"no class folders in {self.root / 'train'}") from err

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """How many class folders root/train holds (read without loading any image)."""
        return len(self.classes)

    def _folder(self, split: str) -> ImageFolder:
        """One split's ImageFolder (no transform), checked to use root/train's classes."""
        path = self.root / split
        try:
            folder = ImageFolder(str(path))
        except FileNotFoundError as err:  # no class folders, or a class folder with no images
            raise self._error(f"{path}: {err}") from err
        if folder.classes != self.classes:
            missing = sorted(set(self.classes) - set(folder.classes))
            extra = sorted(set(folder.classes) - set(self.classes))
            raise self._error(
                f"{path} has other classes than root/train (missing {missing}, extra {extra})"
            )
        return folder

    def _transform(self, train: bool) -> Callable[[Image.Image], Tensor]:
        """timm's training augmentation, or its resize + centre-crop evaluation pipeline."""
        # Imported here: `import timm` takes seconds and pulls in wandb, and only this module
        # needs it, so the default digits run and `import repvgg_lab.data` stay light.
        from timm.data import create_transform

        return create_transform(
            input_size=self.img_size,
            is_training=train,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            color_jitter=self.color_jitter,
            auto_augment=self.auto_augment,
            mean=self.mean,
            std=self.std,
        )

    def _test_folder(self) -> str:
        """The folder the test split reads; "auto" without root/test falls back to val, loudly."""
        if self.test_split != "auto":
            return self.test_split
        if (self.root / "test").is_dir():
            return "test"
        log.warning(
            "%s has no test/ folder: the test split is val/ (test/acc = validation accuracy; "
            "set data.test_split=val to make this explicit)",
            self.root,
        )
        return "val"

    def _build_splits(self) -> Splits:
        """Scan the folders once; the training folder serves both train and train_eval."""
        _ = self.classes  # checks the layout first, so errors name what is missing
        train = self._folder("train")
        eval_tf = self._transform(train=False)
        val = TransformSubset(self._folder("val"), None, eval_tf)
        return Splits(
            train=TransformSubset(train, None, self._transform(train=True)),
            val=val,
            test=val
            if self._test_folder() == "val"
            else TransformSubset(self._folder("test"), None, eval_tf),
            train_eval=TransformSubset(train, None, eval_tf),
        )
