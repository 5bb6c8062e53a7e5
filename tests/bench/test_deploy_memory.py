"""The deploy-memory tool: wait4 reads a child's real peak RSS and a failing child's log tail is
reported; the generated trees nest; a tiny run of the CLI (32 px, 10/20 val images, 1/2
calibration batches) measures all five deploys and computes the ratios from its own numbers.
No memory or time verdict is asserted: at 32 px they measure only the interpreter."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from repvgg_lab.bench.deploy_memory import CONFIGS, build_trees, measure, ratios
from repvgg_lab.results import read_results
from tests.helpers.cli import run_script

VAL, CALIBRATION = (10, 20), (1, 2)


def test_measure_reads_the_child_peak_rss_not_its_parents(tmp_path: Path) -> None:
    # This process holds 800 MiB more while it measures: a child forked from it directly would
    # report at least that (Linux keeps the peak across exec).
    ballast = bytearray(800 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    result = measure([sys.executable, "-c", code], tmp_path / "log")
    assert 300 < result["peak_rss_mib"] < 700 and result["wall_s"] > 0
    del ballast


def test_a_failing_child_raises_with_its_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('boom from the child'); sys.exit(3)"
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*boom from the child"):
        measure([sys.executable, "-c", code], tmp_path / "log")


def test_trees_share_training_images_and_nest(tmp_path: Path) -> None:
    roots = build_trees(tmp_path, [10, 25], 16, size=(40, 30))
    small, large = (sorted((roots[n] / "val").rglob("*.jpg")) for n in (10, 25))
    assert (len(small), len(large)) == (10, 25)
    assert len({p.parent.name for p in small}) == 10  # every class has a validation image
    names = {p.relative_to(roots[25]): p.read_bytes() for p in large}
    assert all(names[p.relative_to(roots[10])] == p.read_bytes() for p in small)
    trains = [sorted((roots[n] / "train").rglob("*.jpg")) for n in (10, 25)]
    assert len(trains[0]) == len(trains[1]) == 20  # >= 16, two per class
    assert trains[0][0].stat().st_ino == trains[1][0].stat().st_ino  # hard links


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("deploy_memory")
    args = ["--out", str(folder / "out.json"), "--workdir", str(folder / "work")]
    args += ["--val-images", *map(str, VAL), "--calibration-batches", *map(str, CALIBRATION)]
    args += ["--input-size", "32", "--image-size", "64", "48"]
    done = run_script("scripts/deploy_memory.py", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_results(folder / "out.json")


@pytest.mark.slow  # five deploys in fresh interpreters: about a minute on 2 cores
def test_a_tiny_run_measures_every_deploy(record: dict[str, Any]) -> None:
    assert record["command"].startswith("python scripts/deploy_memory.py --out")
    assert record["machine"]["cpu"] and record["machine"]["threads"] == 1
    results = record["results"]
    runs = results["runs"]
    assert set(runs) == set(CONFIGS)
    for name, (large_val, large_cb, method, _) in CONFIGS.items():
        run = runs[name]
        assert (run["val_images"], run["calibration_batches"], run["method"]) == (
            VAL[large_val],
            CALIBRATION[large_cb],
            method,
        )
        assert 50 < run["peak_rss_mib"] < 20_000 and run["wall_s"] > 0  # a torch process
        assert run["command"].startswith("python deploy.py ckpt=")
        assert f"quantize.calibration_batches={run['calibration_batches']}" in run["command"]
        assert f"quantize.method={method}" in run["command"]
        m = run["metrics"]
        assert isinstance(m["quant/int8/val/acc"], float) and 0 <= m["quant/int8/val/acc"] <= 1
        assert m["verify/images"] == min(64, run["val_images"])  # verify.size's default
        assert m["quant/int8/images"] == run["val_images"]  # every validation image
        assert m["quant/int8/calibration_images"] == 8 * run["calibration_batches"]
    assert results["ratios"] == ratios(runs)  # the file's ratios are the runs' own
    for name, r in results["ratios"].items():
        base = runs[r["over"]]
        assert r["rss_ratio"] == pytest.approx(runs[name]["peak_rss_mib"] / base["peak_rss_mib"])
        assert r["wall_ratio"] == pytest.approx(runs[name]["wall_s"] / base["wall_s"])
        assert r["factor"] == 2 and r["wall_limit"] == pytest.approx(2.2)
        assert r["rss_growth_ok"] == (r["rss_ratio"] <= 1.10)
    assert {n: r["grows"] for n, r in results["ratios"].items()} == {
        "val_large": "val_images",
        "calibration_large": "calibration_batches",
        "percentile_calibration_large": "calibration_batches",
    }
