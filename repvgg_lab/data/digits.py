"""scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes), upsampled: the default."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import TensorDataset

from repvgg_lab.data.base import ImageDataModule, Splits, TransformSubset, stratified_split

log = logging.getLogger(__name__)


class _CropReplicate:
    """Cut a `size` window out of an edge-padded 1-channel image (at random when `shift`, else
    centred) and repeat it to `channels`; both are views, so a sample costs microseconds."""

    def __init__(self, size: int, pad: int, channels: int, shift: bool) -> None:
        self.size, self.pad, self.channels, self.shift = size, pad, channels, shift

    def __call__(self, x: Tensor) -> Tensor:
        if self.shift:
            i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        else:
            i = j = self.pad
        return x[:, i : i + self.size, j : j + self.size].expand(self.channels, -1, -1)


class DigitsDataModule(ImageDataModule):
    """Digits held in memory as tensors, built once in `setup`; no download, no disk reads.

    Pixels 0..16 are scaled to [0, 1], upsampled bilinearly to `img_size`, then normalized with
    one mean/std computed over the training split's pixels (exposed as `mean`, `std` after setup).
    The stratified train/val/test split depends on `split_seed` only, never on torch's seed.
    Training augmentation (`augment`) is a random shift of up to img_size/8 pixels, padding
    with the edge value (the digits' border is background).
    """

    num_classes = 10

    def __init__(
        self,
        img_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        in_channels: int = 3,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if img_size < 8 or in_channels < 1:
            raise ValueError(f"img_size={img_size} must be >= 8 and in_channels={in_channels} >= 1")
        if min(val_fraction, test_fraction) <= 0 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction={val_fraction}, test_fraction={test_fraction}: "
                "each must be > 0 and together < 1"
            )
        self.save_hyperparameters()
        self.img_size = img_size
        self.in_channels = in_channels
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.augment = augment
        self.mean: float | None = None
        self.std: float | None = None

    def _build_splits(self) -> Splits:
        """Load, split, upsample and normalize all images at once (a few ms)."""
        digits = load_digits()
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        # Bilinear weights are convex, so the upsampled pixels stay in [0, 1].
        x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear")
        val_idx, test_idx, train_idx = stratified_split(
            digits.target, (self.val_fraction, self.test_fraction), self.split_seed
        )
        train_pixels = x[torch.as_tensor(train_idx)]
        self.mean, self.std = train_pixels.mean().item(), train_pixels.std().item()
        # Pad once with the edge value (the digits' border is background) so a shift is a slice.
        pad = max(1, self.img_size // 8) if self.augment else 0
        x = F.pad((x - self.mean) / self.std, (pad,) * 4, mode="replicate")
        base = TensorDataset(x, labels)
        eval_tf = _CropReplicate(self.img_size, pad, self.in_channels, shift=False)
        train_tf = _CropReplicate(self.img_size, pad, self.in_channels, shift=self.augment)
        return Splits(
            train=TransformSubset(base, train_idx, train_tf),
            val=TransformSubset(base, val_idx, eval_tf),
            test=TransformSubset(base, test_idx, eval_tf),
            train_eval=TransformSubset(base, train_idx, eval_tf),
        )
