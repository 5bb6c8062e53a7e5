"""The pre-resized copy of an ImageFolder tree: sizes, aspect, colour modes, resuming, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repvgg_lab.data.resize import MANIFEST, resize_tree, shrunk_size
from repvgg_lab.errors import ImageTreeError
from tests.helpers.cli import load_script, run_script

# Source name -> (mode, size, format, output name, output size at max side 256).
CASES = {
    "train/ant/big.jpg": ("RGB", (640, 480), "JPEG", "big.jpg", (256, 192)),
    "train/ant/odd.JPEG": ("RGB", (301, 97), "JPEG", "odd.JPEG", (256, 82)),  # 82.498 px
    "train/ant/tall.png": ("RGB", (97, 301), "PNG", "tall.jpg", (82, 256)),
    "train/bee/gray.png": ("L", (400, 300), "PNG", "gray.jpg", (256, 192)),
    "train/bee/palette.png": ("P", (300, 500), "PNG", "palette.jpg", (154, 256)),  # 153.6
    "train/bee/cmyk.jpg": ("CMYK", (512, 300), "JPEG", "cmyk.jpg", (256, 150)),
    "val/ant/small.jpg": ("RGB", (100, 80), "JPEG", "small.jpg", (100, 80)),  # copied as is
    "val/bee/small_gray.png": ("L", (50, 60), "PNG", "small_gray.jpg", (50, 60)),
}
# The colour each source shows through torchvision's loader (convert("RGB")).
COLOUR = {"RGB": (200, 40, 90), "L": (77, 77, 77), "P": (10, 180, 60), "CMYK": (0, 0, 0)}


def _image(mode: str, size: tuple[int, int]) -> Image.Image:
    """A flat image in `mode` that shows COLOUR[mode] once converted to RGB."""
    if mode == "P":
        img = Image.new("RGB", size, COLOUR["P"]).quantize(colors=4)
    elif mode == "CMYK":
        img = Image.new("CMYK", size, (0, 0, 0, 255))  # black in any CMYK -> RGB convention
    else:
        img = Image.new(mode, size, COLOUR[mode] if mode == "RGB" else 77)
    return img


def write_tree(root: Path) -> None:
    """Every CASES image, a README beside them, and nothing else."""
    for rel, (mode, size, fmt, _, _) in CASES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _image(mode, size).save(root / rel, format=fmt)
    (root / "README.txt").write_text("not an image\n")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    write_tree(tmp_path / "src")
    return tmp_path / "src"


def _out(dst: Path, rel: str) -> Path:
    return dst / Path(rel).parent / CASES[rel][3]


def test_shrunk_size_keeps_the_aspect_and_never_enlarges() -> None:
    assert shrunk_size(500, 375, 256) == (256, 192)
    assert shrunk_size(375, 500, 256) == (192, 256)
    assert shrunk_size(256, 10, 256) == (256, 10)
    assert shrunk_size(100, 80, 256) == (100, 80)
    assert shrunk_size(5000, 3, 256) == (256, 1)  # never 0 px


def test_every_image_is_shrunk_to_an_rgb_jpeg_at_its_relative_path(
    src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    summary = resize_tree(src, dst, max_side=256, quality=90, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (len(CASES), 0, [])
    assert summary.ignored == 1 and not (dst / "README.txt").exists()
    for rel, (mode, _, _, _, size) in CASES.items():
        with Image.open(_out(dst, rel)) as out:
            assert (out.format, out.mode, out.size) == ("JPEG", "RGB", size), rel
            pixels = np.asarray(out, dtype=np.float64)
        centre = pixels[size[1] // 2, size[0] // 2]
        assert np.abs(centre - COLOUR[mode]).max() <= 3, rel  # the loader's colour, kept
    assert (dst / "val/ant/small.jpg").read_bytes() == (src / "val/ant/small.jpg").read_bytes()
    on_disk = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert on_disk == sorted([MANIFEST, *(str(_out(Path(), rel)) for rel in CASES)])


def test_a_rerun_skips_everything_and_a_leftover_temp_file_is_not_done(
    src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    resize_tree(src, dst, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*.jp*g")}
    again = resize_tree(src, dst, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, len(CASES), [])
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.jp*g")} == stamps
    # A run killed while writing big.jpg: its temporary file is there, the output is not.
    out = _out(dst, "train/ant/big.jpg")
    out.unlink()
    leftover = out.with_name(".big.jpg.k1ll3d_x.tmp")
    leftover.write_bytes(b"\xff\xd8half a jpeg")
    resumed = resize_tree(src, dst, progress=False)
    assert (resumed.done, resumed.skipped, resumed.leftovers) == (1, len(CASES) - 1, 1)
    assert not leftover.exists()
    with Image.open(out) as img:
        assert img.size == (256, 192)


def test_workers_write_the_same_files_as_one_process(src: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    resize_tree(src, one, workers=1, progress=False)
    summary = resize_tree(src, two, workers=2, progress=False)
    assert summary.done == len(CASES)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_bad_images_are_listed_and_the_rest_is_written(src: Path, tmp_path: Path) -> None:
    (src / "train/ant/broken.jpg").write_bytes(b"this is no jpeg")
    Image.new("RGB", (30, 30)).save(src / "train/bee/gray.jpg")  # gray.png would become gray.jpg
    dst = tmp_path / "dst"
    summary = resize_tree(src, dst, progress=False)
    assert [name for name, _ in summary.failed] == ["train/ant/broken.jpg", "train/bee/gray.png"]
    assert "UnidentifiedImageError" in summary.failed[0][1]
    assert "gray.jpg" in summary.failed[1][1]
    assert summary.done == len(CASES) - 1 + 1  # gray.png lost its name to the real gray.jpg
    with Image.open(dst / "train/bee/gray.jpg") as img:
        assert img.size == (30, 30)  # the JPEG's own, not gray.png's


def test_bad_trees_and_options_are_refused_before_writing(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageTreeError, match="is not a directory"):
        resize_tree(tmp_path / "missing", tmp_path / "dst")
    with pytest.raises(ImageTreeError, match="is SRC"):
        resize_tree(src, src / "train" / "..")
    with pytest.raises(ImageTreeError, match="inside SRC"):
        resize_tree(src, src / "train" / "copy")
    with pytest.raises(ImageTreeError, match="quality must be at most 100"):
        resize_tree(src, tmp_path / "dst", quality=101)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageTreeError, match="holds no images"):
        resize_tree(tmp_path / "empty", tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and not (src / "train" / "copy").exists()
    resize_tree(src, tmp_path / "dst", max_side=256, progress=False)
    with pytest.raises(ImageTreeError, match="was written with"):
        resize_tree(src, tmp_path / "dst", max_side=128)


def test_the_script_exits_2_with_one_line_for_a_missing_src(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = run_script("scripts/resize_imagefolder.py", str(missing), str(tmp_path / "d"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: SRC {missing} is not a directory"]


def test_the_script_exits_1_and_lists_failed_files(
    src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (src / "val/ant/broken.jpg").write_bytes(b"")
    script = load_script("resize_imagefolder")
    argv = [str(src), str(tmp_path / "dst"), "--workers", "1", "--no-progress"]
    with caplog.at_level("INFO"):
        assert script.main(argv) == 1
    assert "failed: val/ant/broken.jpg" in caplog.text
    assert f"done {len(CASES)}, skipped 0 (already there), failed 1" in caplog.text
    os.remove(src / "val/ant/broken.jpg")
    assert script.main(argv) == 0  # the rest is there: nothing left to do, nothing failed
