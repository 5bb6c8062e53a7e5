"""LightningDataModules: embedded digits (default), CIFAR-10/100 and ImageNet-style folders."""

from repvgg_lab.data.base import ImageDataModule, Splits, TransformSubset, stratified_split
from repvgg_lab.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule
from repvgg_lab.data.digits import DigitsDataModule
from repvgg_lab.data.imagenet import ImageNetDataModule
from repvgg_lab.errors import DataRootError

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataModule",
    "DataRootError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "Splits",
    "TransformSubset",
    "stratified_split",
]
