"""The `data` section: images per second that `ImageNetDataModule`'s own DataLoader delivers, from
an ImageNet-like tree and from its pre-resized copy, per transform and worker count.

The tree is generated in a temporary folder: root/train/<class>/*.jpg and root/val/<class>/*.jpg,
JPEGs at quality 90 of ImageNet's typical size (500×375, every fourth one portrait) and mean file
size (about 110 kB), whose content mixes low-frequency shapes, mid-frequency texture and noise so
that they compress like photographs rather than flat colour. `resize_tree` makes the copy (max
side 256 by default) and is timed too. For each transform (timm's training augmentation, the
resize + centre-crop evaluation) and each worker count, one loader per tree is built and the
two alternate epoch by epoch after untimed warm-up epochs, so a load change on a shared machine
hits both; images/s is the median over epochs, the speedup the median of the per-epoch ratios.
The files sit in the page cache: this measures decoding and transforms, not the disk.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import Settings
from repvgg_lab.data.imagenet import ImageNetDataModule
from repvgg_lab.data.resize import is_image, resize_tree
from repvgg_lab.data.sampling import seeded_rng

log = logging.getLogger(__name__)

SIZES = ((500, 375), (500, 375), (375, 500), (500, 375))  # (width, height), in turn
# Mix of the synthetic picture: shapes (a 6×8 image, bicubic) and texture (47×63, bilinear)
# half and half, plus Gaussian noise of this sigma; tuned so that a 500×375 JPEG at quality 90
# is about 110 kB (sigma 14 with a 0.6 / 0.4 mix gave 86 kB).
NOISE_SIGMA = 21.5


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB picture with low-frequency structure, mid-frequency texture and noise."""
    portrait = height > width
    layers = []
    for grid, method in (((6, 8), Image.Resampling.BICUBIC), ((47, 63), Image.Resampling.BILINEAR)):
        rows, cols = grid[::-1] if portrait else grid
        small = Image.fromarray(rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8))
        layers.append(np.asarray(small.resize((width, height), method), dtype=np.float32))
    pixels = 0.5 * (layers[0] + layers[1])
    pixels += NOISE_SIGMA * rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_synthetic_tree(root: Path, s: Settings, seed: int = 0) -> int:
    """root/{train,val}/cNNN/NNNN.jpg with the settings' counts; returns the number of images."""
    count = 0
    for split, per_class in (("train", s.data_train_per_class), ("val", s.data_val_per_class)):
        for c in range(s.data_classes):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                rng = seeded_rng(seed, int(split == "val"), c, i)
                image = synthetic_image(rng, *SIZES[count % len(SIZES)])
                image.save(folder / f"{i:04d}.jpg", format="JPEG", quality=s.data_quality)
                count += 1
    return count


def tree_stats(root: Path) -> dict[str, float]:
    """Number of images, mean file size (kB), mean width and height, largest side (px)."""
    sizes, dims = [], []
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_image(path.name):
            sizes.append(path.stat().st_size)
            with Image.open(path) as img:  # reads the header only
                dims.append(img.size)
    widths, heights = zip(*dims, strict=True)
    return {
        "images": float(len(sizes)),
        "mean_kb": float(np.mean(sizes)) / 1000,
        "mean_width": float(np.mean(widths)),
        "mean_height": float(np.mean(heights)),
        "max_side": float(max(max(widths), max(heights))),
    }


def make_loader(root: Path, transform: str, workers: int, s: Settings) -> DataLoader:
    """The DataLoader `ImageNetDataModule` gives training (`transform` "train") or validation."""
    dm = ImageNetDataModule(
        root,
        img_size=s.data_img_size,
        batch_size=s.data_batch,
        num_workers=workers,
        test_split="val",
    )
    dm.sample_seed = 0
    return dm.train_dataloader() if transform == "train" else dm.val_dataloader()


def epoch_rate(loader: DataLoader, epoch: int) -> float:
    """Images/s over one whole epoch of `loader`."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    images, start = 0, time.perf_counter()
    for x, _ in loader:
        images += len(x)
    return images / (time.perf_counter() - start)


def alternated_rates(
    roots: dict[str, Path], transform: str, workers: int, s: Settings
) -> dict[str, list[float]]:
    """Per tree, images/s of each timed epoch; the trees' loaders take turns epoch by epoch."""
    loaders = {tree: make_loader(root, transform, workers, s) for tree, root in roots.items()}
    rates: dict[str, list[float]] = {tree: [] for tree in roots}
    for epoch in range(s.data_warmup + s.data_rounds):
        for tree in roots:
            rate = epoch_rate(loaders[tree], epoch)
            if epoch >= s.data_warmup:
                rates[tree].append(rate)
    # Free the loaders, and stop their persistent workers, now: Lightning's save_hyperparameters
    # leaves the frames on the stack when a DataModule is built (this one too) in a reference
    # cycle, and a loader freed later by the garbage collector waits seconds for its workers.
    loaders.clear()
    return rates


def _measure(s: Settings, run: Run, roots: dict[str, Path], transform: str, workers: int) -> None:
    """Both trees with one transform and worker count: images/s and the resized speedup."""
    full, resized = tuple(roots)  # bench_data_section's order: the full tree, then its copy
    with run.window(k.data_window(transform, workers)):
        rates = alternated_rates(roots, transform, workers, s)
    for tree, values in rates.items():
        run.metrics[k.data_key(tree, transform, workers)] = statistics.median(values)
    ratios = [r / f for r, f in zip(rates[resized], rates[full], strict=True)]
    speedup = statistics.median(ratios)
    run.metrics[k.data_ratio_key("resized_speedup", transform, workers)] = speedup
    run.metrics[k.data_ratio_key("resized_time_over_full", transform, workers)] = 1 / speedup
    run.details[k.data_window(transform, workers)] = rates
    log.info(
        "data %s, %d workers: %s images/s; resized / full %.2fx",
        transform,
        workers,
        ", ".join(f"{tree} {statistics.median(v):.0f}" for tree, v in rates.items()),
        speedup,
    )


def bench_data_section(s: Settings, run: Run) -> None:
    """Generate the tree and its copy in a temporary folder, then measure every transform and
    worker count; the folder is removed at the end."""
    with tempfile.TemporaryDirectory(prefix="repvgg_lab_data_") as tmp:
        full, resized = k.FULL_TREE, k.resized_tree(s.data_max_side)
        roots = {full: Path(tmp) / full, resized: Path(tmp) / resized}
        start = time.perf_counter()
        count = write_synthetic_tree(roots[full], s)
        log.info("data: wrote %d JPEGs in %.1f s", count, time.perf_counter() - start)
        resize_workers = max((1, *s.data_workers))
        start = time.perf_counter()
        summary = resize_tree(
            roots[full], roots[resized], s.data_max_side, s.data_quality, resize_workers, False
        )
        if summary.failed:  # generated images that do not resize: a bug, not a measurement
            raise RuntimeError(f"resizing the generated tree failed: {summary.failed[:3]}")
        run.metrics[k.DATA_RESIZE_RATE] = summary.done / (time.perf_counter() - start)
        run.metrics[k.DATA_RESIZE_WORKERS] = float(resize_workers)
        for tree, root in roots.items():
            for stat, value in tree_stats(root).items():
                run.metrics[k.data_tree_key(tree, stat)] = value
        for transform in k.DATA_TRANSFORMS:
            for workers in s.data_workers:
                _measure(s, run, roots, transform, workers)
