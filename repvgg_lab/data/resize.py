"""A pre-resized copy of an ImageFolder tree (`scripts/resize_imagefolder.py`).

Every image under SRC is shrunk so that its longer side is at most `max_side` and written as a
JPEG at the same relative path under DST, so split and class folders stay as they are and the
copy loads with the same `data.root=` layout. The rules:

- Images are the files with torchvision's image extensions (any case); other files are left out
  and counted. A JPEG keeps its file name; any other image becomes `<stem>.jpg`. When that name
  belongs to another image of the same folder (`a.png` beside `a.jpg`), the non-JPEG one fails
  (listed) instead of overwriting.
- Pixels are converted to RGB as torchvision's loader converts them (`Image.convert("RGB")`,
  for CMYK, grayscale and palette images alike; EXIF orientation is not applied, as the loader
  does not apply it either), so the copy holds what training would have read, only smaller.
  Shrinking uses Lanczos, after decoding a JPEG at a reduced DCT scale no smaller than twice the
  target (Pillow's `draft`, as its `thumbnail` does). Nothing is enlarged: an RGB or grayscale
  JPEG that is small enough already is copied byte for byte, any other image is re-encoded.
- Each output is written to a temporary name beside it and renamed into place, so a killed run
  leaves no half-written image. A rerun skips every output that exists and removes the
  temporary files a killed run left. DST/.resize_imagefolder.json records max_side and quality;
  a rerun with other values is refused rather than mixing two kinds of file in one copy.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from repvgg_lab.errors import ImageTreeError, check_integer
from repvgg_lab.fileio import atomic_path, write_json
from repvgg_lab.progress import Progress

log = logging.getLogger(__name__)

JPEG_SUFFIXES = (".jpg", ".jpeg")
MANIFEST = ".resize_imagefolder.json"
TMP_SUFFIX = ".tmp"  # atomic_path's temporary files: .<name>.<random>.tmp beside the output


@dataclass(frozen=True)
class Job:
    """One image to write: source and output path, relative to SRC and DST."""

    src: str
    dst: str


@dataclass
class ResizeSummary:
    """What a run did: outputs written, outputs already there, per-file failures (relative
    source path, error), non-image files left out, temporary files of a killed run removed."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    leftovers: int = 0

    def line(self) -> str:
        """The one-line summary a run ends with."""
        return (
            f"done {self.done}, skipped {self.skipped} (already there), failed {len(self.failed)}"
            f"; {self.ignored} non-image files left out, {self.leftovers} leftover temporary "
            "files removed"
        )


def is_image(name: str) -> bool:
    """Whether torchvision's ImageFolder would load a file of this name."""
    return name.lower().endswith(IMG_EXTENSIONS)


def output_name(name: str) -> str:
    """The output's file name: a JPEG keeps its name, any other image becomes <stem>.jpg."""
    return name if name.lower().endswith(JPEG_SUFFIXES) else f"{Path(name).stem}.jpg"


def shrunk_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is `max_side`, aspect kept (rounded, >= 1 px);
    the size itself when it fits already (never enlarged)."""
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_image(src: Path, dst: Path, max_side: int, quality: int) -> None:
    """Write `src` shrunk to `max_side` as an RGB JPEG at `quality` to `dst`, atomically."""
    with Image.open(src) as img:
        size = shrunk_size(*img.size, max_side)
        if size == img.size and img.format == "JPEG" and img.mode in ("RGB", "L"):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            return
        if size != img.size and img.mode in ("RGB", "L"):
            # A JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least twice the target, which
            # saves most of the decoding; other formats ignore this.
            img.draft(img.mode, (2 * size[0], 2 * size[1]))
        rgb = img.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    with atomic_path(dst) as tmp:
        rgb.save(tmp, format="JPEG", quality=quality)


def _is_leftover(name: str, outputs: set[str]) -> bool:
    """Whether `name` is a temporary file `atomic_path` made for one of `outputs`."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return False
    parts = name[1:].rsplit(".", 2)
    return len(parts) == 3 and parts[0] in outputs


def _plan_folder(
    src_dir: Path, dst_dir: Path, files: list[str], rel: Path, summary: ResizeSummary
) -> Iterator[Job]:
    """The jobs of one folder; counts what is skipped, left out or clashing into `summary`."""
    images = sorted(
        (f for f in files if is_image(f)), key=lambda f: (not f.lower().endswith(JPEG_SUFFIXES), f)
    )
    summary.ignored += len(files) - len(images)
    existing = set(os.listdir(dst_dir)) if dst_dir.is_dir() else set()
    claimed: dict[str, str] = {}
    for name in images:
        out = output_name(name)
        if out in claimed:
            summary.failed.append((str(rel / name), f"its output {out} is {claimed[out]}'s"))
            continue
        claimed[out] = name
        if out in existing:
            summary.skipped += 1
        else:
            yield Job(str(rel / name), str(rel / out))
    outputs = set(claimed)
    for name in existing:
        if _is_leftover(name, outputs):
            (dst_dir / name).unlink(missing_ok=True)
            summary.leftovers += 1


def plan(src: Path, dst: Path, summary: ResizeSummary) -> list[Job]:
    """Every image under `src` whose output under `dst` is still missing, folder by folder."""
    jobs: list[Job] = []
    for folder, dirs, files in os.walk(src, followlinks=True):
        dirs.sort()
        rel = Path(folder).relative_to(src)
        jobs += _plan_folder(Path(folder), dst / rel, sorted(files), rel, summary)
    return jobs


def check_trees(src: Path, dst: Path) -> tuple[Path, Path]:
    """Both trees resolved; refuses a missing SRC and a DST that is SRC or lies inside it."""
    if not src.is_dir():
        raise ImageTreeError(f"SRC {src} is not a directory")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real:
        raise ImageTreeError(f"DST {dst} is SRC; the copy needs a folder of its own")
    if src_real in dst_real.parents:
        raise ImageTreeError(f"DST {dst} lies inside SRC {src}; choose a folder outside it")
    return src_real, dst_real


def _check_manifest(dst: Path, options: dict[str, int]) -> None:
    """Refuse a DST that an earlier run wrote with other options."""
    path = dst / MANIFEST
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    if before != options:
        raise ImageTreeError(
            f"DST {dst} was written with {before}; this run asks for {options}. "
            "Use another DST, or the same options to resume"
        )


def _run_job(job: Job, src: Path, dst: Path, max_side: int, quality: int) -> tuple[str, str | None]:
    """One job in a worker: (source, None) when written, (source, error) when it failed."""
    try:
        resize_image(src / job.src, dst / job.dst, max_side, quality)
    except Exception as err:  # any error of one image fails that image, not the run
        return job.src, f"{type(err).__name__}: {' '.join(str(err).split())}"
    return job.src, None


def _results(
    jobs: list[Job], worker: functools.partial, workers: int
) -> Iterable[tuple[str, str | None]]:
    """Each job's result, from a pool of `workers` processes (in this process for one)."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(worker, jobs)
        return
    chunk = max(1, min(64, len(jobs) // (8 * workers)))
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap_unordered(worker, jobs, chunksize=chunk)


def resize_tree(
    src: str | Path,
    dst: str | Path,
    max_side: int = 256,
    quality: int = 90,
    workers: int = 1,
    progress: bool = True,
) -> ResizeSummary:
    """Copy the ImageFolder tree `src` to `dst` with every image shrunk to `max_side` (see the
    module docstring); bad trees or options raise `ImageTreeError` before anything is written,
    a failing image is listed in the summary and the run goes on."""
    check_integer(ImageTreeError, "max_side", max_side, 1)
    check_integer(ImageTreeError, "workers", workers, 1)
    if check_integer(ImageTreeError, "quality", quality, 1) > 100:
        raise ImageTreeError(f"quality must be at most 100, got {quality}")
    src, dst = check_trees(Path(src), Path(dst))
    options = {"max_side": max_side, "quality": quality}
    _check_manifest(dst, options)
    summary = ResizeSummary()
    jobs = plan(src, dst, summary)
    if not jobs and not summary.skipped and not summary.failed:
        raise ImageTreeError(f"SRC {src} holds no images ({', '.join(IMG_EXTENSIONS)})")
    write_json(dst / MANIFEST, options)
    log.info("%d images to write, %d already there", len(jobs), summary.skipped)
    worker = functools.partial(_run_job, src=src, dst=dst, max_side=max_side, quality=quality)
    bar = Progress(len(jobs), "resize", enabled=progress, quiet_for=0.0, min_interval=0.0)
    try:
        for name, error in _results(jobs, worker, workers):
            if error is None:
                summary.done += 1
            else:
                summary.failed.append((name, error))
            bar.update()
    finally:
        bar.close()
    summary.failed.sort()
    return summary
