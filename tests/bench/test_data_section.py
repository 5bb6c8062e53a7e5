"""The `data` benchmark section in its `--smoke` profile, run as a user runs it: every key is
written, the pre-resized tree is smaller with its longest side within max side, and `--render`
writes docs/data.md's block from the results file alone. No speed is asserted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.data_markdown import (
    BLOCK,
    DEMAND,
    TARGET_KEY,
    render_data_from_record,
    workers_needed,
)
from repvgg_lab.bench.settings import DEFAULT_SECTIONS, PROFILES
from repvgg_lab.results import generated_blocks, read_results
from tests.helpers.cli import load_script, run_script

SMOKE = PROFILES["smoke"]
RESIZED = k.resized_tree(SMOKE.data_max_side)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `--smoke --sections data` run of the CLI, rendered into a markdown file beside it."""
    folder = tmp_path_factory.mktemp("data_bench")
    (folder / "data.md").write_text("# Data\n\nHand-written text stays.\n")
    args = ["--smoke", "--sections", "data", "--threads", "1", "--out", str(folder / "data.json")]
    done = run_script("scripts/bench.py", *args, "--render", "--md", str(folder / "data.md"))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def record(smoke_run: Path) -> dict[str, Any]:
    return read_results(smoke_run / "data.json")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_data_runs_only_when_asked() -> None:
    assert "data" not in DEFAULT_SECTIONS


def test_every_key_is_written(record: dict[str, Any]) -> None:
    results = record["results"]
    assert record["command"].startswith("python scripts/bench.py --smoke --sections data")
    assert results["sections"] == ["data"] and record["machine"]["cpu"]
    m = dict(results["metrics"])
    for transform in k.DATA_TRANSFORMS:
        for w in SMOKE.data_workers:
            rates = [m.pop(k.data_key(tree, transform, w)) for tree in (k.FULL_TREE, RESIZED)]
            assert all(_positive(r) for r in rates)
            speedup = m.pop(k.data_ratio_key("resized_speedup", transform, w))
            inverse = m.pop(k.data_ratio_key("resized_time_over_full", transform, w))
            assert _positive(speedup) and inverse == pytest.approx(1 / speedup)
            per_epoch = results["details"][k.data_window(transform, w)]
            assert [len(v) for v in per_epoch.values()] == [SMOKE.data_rounds] * 2
            assert results["windows"][k.data_window(transform, w)]["wall_s"] > 0
    assert _positive(m.pop(k.DATA_RESIZE_RATE))
    assert m.pop(k.DATA_RESIZE_WORKERS) == max(SMOKE.data_workers)
    stats = {
        (tree, stat): m.pop(k.data_tree_key(tree, stat))
        for tree in (k.FULL_TREE, RESIZED)
        for stat in ("images", "mean_kb", "mean_width", "mean_height", "max_side")
    }
    assert m == {}  # nothing else
    images = SMOKE.data_classes * (SMOKE.data_train_per_class + SMOKE.data_val_per_class)
    assert stats[k.FULL_TREE, "images"] == stats[RESIZED, "images"] == images
    (target,) = [t for t in results["targets"] if t["key"] == TARGET_KEY]
    assert target["holds"] == (target["value"] <= 0.5)


def test_the_tree_looks_like_imagenet_and_the_copy_is_smaller(record: dict[str, Any]) -> None:
    m = record["results"]["metrics"]

    def stat(tree: str, name: str) -> float:
        return m[k.data_tree_key(tree, name)]

    # ImageNet's typical picture: 500 x 375 JPEGs of about 110 kB.
    assert 90 < stat(k.FULL_TREE, "mean_kb") < 130
    assert stat(k.FULL_TREE, "max_side") == 500
    assert 375 < stat(k.FULL_TREE, "mean_width") < 500  # mostly landscape, some portrait
    assert stat(RESIZED, "max_side") <= SMOKE.data_max_side
    assert stat(RESIZED, "mean_kb") < stat(k.FULL_TREE, "mean_kb") / 2
    # Shrunk by 500 -> 256 on every side, the aspect kept.
    for side in ("mean_width", "mean_height"):
        assert stat(RESIZED, side) == pytest.approx(stat(k.FULL_TREE, side) * 256 / 500, abs=1)


def test_render_writes_the_data_block_only(smoke_run: Path, record: dict[str, Any]) -> None:
    text = (smoke_run / "data.md").read_text()
    assert text.startswith("# Data\n\nHand-written text stays.\n")
    blocks = generated_blocks(text)
    assert list(blocks) == [BLOCK]
    assert blocks[BLOCK] == render_data_from_record(record)
    for model, _, _ in DEMAND:
        assert f"| {model} | ≥ " in blocks[BLOCK]
    assert "workers needed" in blocks[BLOCK]
    # Every cell is a number: the renderer asks for the names the writer wrote ("—" if not).
    assert "—" not in blocks[BLOCK]


def test_workers_needed_rounds_up_and_skips_what_was_not_measured() -> None:
    assert workers_needed(1010.0, 115.0) == 9
    assert workers_needed(335.0, 335.0) == 1
    assert workers_needed(335.0, None) is None and workers_needed(335.0, 0.0) is None


def test_data_is_refused_beside_other_sections(tmp_path: Path) -> None:
    bench = load_script("bench")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--smoke", "--sections", "data", "train", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and not (tmp_path / "x.json").exists()
