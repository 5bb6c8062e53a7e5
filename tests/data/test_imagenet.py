"""ImageNetDataModule over a tiny ImageFolder tree, and its layout errors."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from repvgg_lab.data import DataRootError, ImageNetDataModule
from repvgg_lab.data.imagenet import IMAGENET_MEAN, IMAGENET_STD


def _dm(root: Path, **kwargs) -> ImageNetDataModule:
    return ImageNetDataModule(root=root, img_size=32, batch_size=2, num_workers=0, **kwargs)


def _spread(x: torch.Tensor) -> float:
    """Largest per-channel standard deviation (0 for a solid colour)."""
    return x.std(dim=(2, 3)).max().item()


def test_default_normalization_matches_timm() -> None:
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert (IMAGENET_MEAN, IMAGENET_STD) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def test_classes_and_batches(imagenet_root: Path) -> None:
    dm = _dm(imagenet_root)
    assert dm.num_classes == 3 and dm.classes == ["ant", "bee", "cat"]  # before any setup
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 6  # 12 images, batch 2
    val_labels = torch.cat([y for _, y in dm.val_dataloader()])
    assert val_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert dm.splits.test is dm.splits.val  # no root/test: test on val


def test_eval_transform_is_deterministic_and_fixed_batch_spans_classes(imagenet_root: Path) -> None:
    dm = _dm(imagenet_root)
    x1, y1 = dm.fixed_batch("train", size=3)
    x2, y2 = _dm(imagenet_root).fixed_batch("train", size=3)
    assert torch.equal(x1, x2) and y1.tolist() == [0, 1, 2]
    # Solid-colour images stay solid through resize + centre crop; the colour survives.
    assert torch.allclose(x1, x1.mean(dim=(2, 3), keepdim=True), atol=1e-5)


def test_crop_pct_changes_eval_resize(imagenet_root: Path) -> None:
    # A 40x40 picture with a 4-pixel border: cropping more tightly must cut more of the border.
    img = Image.new("RGB", (40, 40), (255, 255, 255))
    img.paste((0, 0, 0), (4, 4, 36, 36))
    img.save(imagenet_root / "val" / "ant" / "0.png")
    tight = _dm(imagenet_root, crop_pct=0.5).fixed_batch("val", size=1)[0]
    loose = _dm(imagenet_root, crop_pct=1.0).fixed_batch("val", size=1)[0]
    assert _spread(tight) < 1e-4 < _spread(loose)  # the tight crop sees only the black centre


def test_test_folder_is_used_when_present(
    imagenet_root: Path, image_folder_writer: Callable
) -> None:
    image_folder_writer(imagenet_root / "test", {"ant": 1, "bee": 1, "cat": 1})
    dm = _dm(imagenet_root)
    assert len(dm.splits.test) == 3 and len(dm.splits.val) == 6


def test_without_test_folder_auto_says_it_tests_on_val_and_test_demands_the_folder(
    imagenet_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="repvgg_lab.data.imagenet"):
        dm = _dm(imagenet_root)
        assert dm.splits.test is dm.splits.val
    assert "no test/ folder: the test split is val/" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="repvgg_lab.data.imagenet"):
        assert _dm(imagenet_root, test_split="val").splits.test is not None
    assert caplog.text == ""  # chosen explicitly: nothing to warn about
    with pytest.raises(DataRootError, match="test"):
        _ = _dm(imagenet_root, test_split="test").splits
    with pytest.raises(ValueError, match="test_split='train' must be one of auto, test, val"):
        _dm(imagenet_root, test_split="train")


def _error(root: Path) -> str:
    with pytest.raises(DataRootError) as info:
        _dm(root).setup("fit")
    message = str(info.value)
    assert "\n" not in message and "root/train/<class>/*.jpg" in message
    assert "root/val/<class>/*.jpg" in message and f"data.root={root}" in message
    return message


def test_missing_root_or_split(tmp_path: Path, imagenet_root: Path) -> None:
    assert "train is not a directory" in _error(tmp_path / "missing")
    shutil.rmtree(imagenet_root / "val")
    assert "val is not a directory" in _error(imagenet_root)
    with pytest.raises(DataRootError):
        _ = _dm(imagenet_root).num_classes


def test_folder_without_images_or_classes(tmp_path: Path, imagenet_root: Path) -> None:
    for f in (imagenet_root / "val" / "bee").iterdir():
        f.unlink()
    assert "bee" in _error(imagenet_root)
    (tmp_path / "bare" / "train").mkdir(parents=True)
    (tmp_path / "bare" / "val").mkdir()
    assert "no class folders" in _error(tmp_path / "bare")


def test_val_classes_must_match_train(imagenet_root: Path, image_folder_writer: Callable) -> None:
    image_folder_writer(imagenet_root / "val", {"dog": 1})
    assert "extra ['dog']" in _error(imagenet_root)


def test_fixed_loader_streams_the_fixed_batch_samples(imagenet_root: Path) -> None:
    dm = _dm(imagenet_root)
    for split, size in (("train", 5), ("val", None)):
        x, y = dm.fixed_batch(split, size=size)
        batches = list(dm.fixed_loader(split, size, batch_size=2, num_workers=0))
        assert [len(b[1]) for b in batches][:-1] == [2] * (len(batches) - 1)
        assert torch.equal(torch.cat([b[0] for b in batches]), x)
        assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_real_loaders_read_a_validation_folder_serving_as_test_once(
    imagenet_root: Path, image_folder_writer
) -> None:
    from repvgg_lab.deploy.verify import real_loaders

    requests = {"val": ("val", None), "test": ("test", None), "few": ("test", 2)}
    without = real_loaders("imagenet", str(imagenet_root), 32, 3, requests, batch=4, workers=0)
    # No root/test: the test split is val/, measured once (as val); a smaller test request is
    # another set of images and stays.
    assert sorted(without) == ["few", "val"] and len(without["val"].dataset) == 6
    image_folder_writer(imagenet_root / "test", dict.fromkeys(("ant", "bee", "cat"), 1))
    with_test = real_loaders("imagenet", str(imagenet_root), 32, 3, requests, batch=4, workers=0)
    assert sorted(with_test) == ["few", "test", "val"] and len(with_test["test"].dataset) == 3
