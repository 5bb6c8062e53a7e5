"""scripts/bench.py in its tiny `--smoke` profile, run as a user runs it: the results file carries
every documented key with sane values, and `--render` turns it into the generated block and a real
PNG. No timings are asserted: speed targets are checked by running the benchmark, not by tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.markdown import flat_report
from repvgg_lab.bench.render import BLOCK
from repvgg_lab.bench.settings import PROFILES
from repvgg_lab.results import generated_blocks, read_results
from tests.helpers.cli import run_script

SMOKE = PROFILES["smoke"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `--smoke` run of the CLI (convert, latency, train) on one thread, rendered into a
    markdown file and plot of the same folder."""
    folder = tmp_path_factory.mktemp("bench")
    args = ["--smoke", "--threads", "1", "--out", str(folder / "bench.json"), "--render"]
    args += ["--md", str(folder / "doc.md"), "--png", str(folder / "plot.png")]
    done = run_script("scripts/bench.py", *args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def record(smoke_run: Path) -> dict[str, Any]:
    return read_results(smoke_run / "bench.json")


@pytest.fixture(scope="module")
def report(record: dict[str, Any]) -> dict[str, Any]:
    return flat_report(record)


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_results_file_records_command_date_and_machine(record: dict[str, Any]) -> None:
    assert record["command"].startswith("python scripts/bench.py --smoke --threads 1 --out ")
    assert record["date"].endswith(" UTC")
    machine = record["machine"]
    assert machine["cpu"] and machine["threads"] == 1 and machine["torch"] == torch.__version__
    assert machine["logical_cores"] >= 1
    assert record["results"]["sections"] == ["convert", "latency", "train", "gpu"]


def test_conversion_keys(report: dict[str, Any]) -> None:
    m = report["metrics"]
    for name in SMOKE.convert_models:
        for stat in ("ours_s", "timm_s", "ratio_vs_timm", "ours_cpu_s", "timm_cpu_s"):
            assert _positive(m[k.convert_key(name, stat)]), stat
        for side in k.CONVERTERS:
            assert m[k.convert_key(name, f"{side}_min_s")] <= m[k.convert_key(name, f"{side}_s")]
        # One round: the paired median is that round's ratio.
        ratio = m[k.convert_key(name, "ours_s")] / m[k.convert_key(name, "timm_s")]
        assert m[k.convert_key(name, "ratio_vs_timm")] == pytest.approx(ratio)
        # Both converters produced the same kernels.
        assert m[k.convert_key(name, "kernel_rel_diff")] < 1e-5
        assert report["windows"][k.convert_window(name)]["wall_s"] > 0


def test_matmul_peak_keys(report: dict[str, Any]) -> None:
    m = report["metrics"]
    per_size = [m[k.matmul_key(lib, n)] for n in SMOKE.matmul_sizes for lib in k.MATMUL_LIBRARIES]
    assert all(_positive(g) for g in per_size)
    assert m[k.PEAK_GFLOPS] == max(per_size)
    assert m[k.PEAK_N] in SMOKE.matmul_sizes
    assert report["labels"][k.PEAK_LIBRARY] in k.MATMUL_LIBRARIES


def _check_runtimes(report: dict[str, Any], name: str, batch: int) -> None:
    m, details = report["metrics"], report["details"]
    work = []
    for v in k.VARIANTS:
        assert _positive(m[k.latency_key(name, batch, v)]), v
        assert m[k.latency_key(name, batch, v, "min_ms")] <= m[k.latency_key(name, batch, v)]
        assert len(details[k.latency_window(name, batch)][v]) == SMOKE.latency_rounds
        if v != "multibranch":
            work.append(
                m[k.latency_key(name, batch, v, "gflops")] * m[k.latency_key(name, batch, v)]
            )
        if v != k.BASELINE:
            assert _positive(m[k.ratio_key(name, batch, v)]), v
    # Every plain runtime does the plain net's work: rate x time is one constant.
    assert max(work) == pytest.approx(min(work), rel=1e-9)


def test_latency_keys(report: dict[str, Any]) -> None:
    m = report["metrics"]
    for name in SMOKE.latency_models:
        # The multi-branch form of RepVGG does more work (its 1x1 branches).
        assert m[k.gmacs_key(name, "multibranch")] > m[k.gmacs_key(name, "plain")] > 0
        for batch in SMOKE.batches:
            # Every runtime computes the multi-branch net's function.
            assert m[k.batch_key(name, batch, "max_rel_diff")] < 1e-4
            assert _positive(m[k.batch_key(name, batch, "compile_s")])
            assert k.compile_error_key(name, batch) not in report["errors"]
            _check_runtimes(report, name, batch)
            fastest = report["labels"][k.batch_key(name, batch, "fastest")]
            times = [m[k.latency_key(name, batch, v)] for v in k.VARIANTS]
            assert m[k.latency_key(name, batch, fastest)] == min(times)
            gflops = m[k.batch_key(name, batch, "fastest_gflops")]
            assert gflops == m[k.latency_key(name, batch, fastest, "gflops")]
            over_peak = m[k.batch_key(name, batch, "fastest_over_peak")]
            assert over_peak == pytest.approx(gflops / m[k.PEAK_GFLOPS])
            assert report["windows"][k.latency_window(name, batch)]["foreign_share"] >= 0


def test_train_keys(report: dict[str, Any]) -> None:
    m = report["metrics"]
    for stat in ("bare_step_ms", "lightning_step_ms", "lightning_overhead"):
        assert _positive(m[k.train_key(stat)]), stat
    assert _positive(m[k.train_key("lightning_overhead_with_setup")])
    for stat in ("bare_step_ms", "lightning_step_ms"):
        assert _positive(m[k.train_key(stat, tiny=True)]), stat
    # Lightning's own cost per step may come out slightly negative on a noisy machine.
    assert math.isfinite(m[k.train_key("lightning_fixed_ms_per_step")])
    assert math.isfinite(m[k.train_key("lightning_overhead_predicted")])
    # The totals include setup and the warm-up steps, the step times do not.
    timed = SMOKE.train_steps - SMOKE.train_warm_steps
    assert m[k.train_key("bare_total_s")] * 1e3 > m[k.train_key("bare_step_ms")] * timed
    steady = report["details"][k.train_window()]["steady"]
    assert len(steady["bare"]) == len(steady["lightning"]) == SMOKE.train_reps


def test_windows_and_targets(report: dict[str, Any]) -> None:
    if not torch.cuda.is_available():
        assert report["gpu"] == "not available"
        assert not any(key.startswith(k.GPU_PREFIX) for key in report["metrics"])
    run = report["windows"][k.RUN]
    assert run["load_before"] >= 0 and run["wall_s"] > 0
    by_key = {t["key"]: t for t in report["targets"]}
    assert set(by_key) == {key for _, key, _ in k.TARGETS}
    assert by_key[k.convert_key("repvgg_b3", "ratio_vs_timm")]["holds"] is None  # not in --smoke
    onnx = by_key[k.ratio_key("repvgg_a0", 1, "onnxruntime")]
    assert onnx["holds"] == (onnx["value"] <= 0.7)


def test_render_writes_the_block_and_a_png(smoke_run: Path) -> None:
    text = (smoke_run / "doc.md").read_text()
    block = generated_blocks(text)[BLOCK]
    for _, key, _ in k.TARGETS:  # the targets of the sections the run measured, only those
        shown = key.split("/")[0] in ("convert", "latency", "train", "gpu")
        assert (f"`{key}`" in block) == shown, key
    # Every section the smoke run measured reached the doc (the renderer found the writer's keys).
    for title in ("### Conversion time", "### CPU inference latency", "### Training loop"):
        assert title in block
    assert "compile time, excluded from latency" in block and "Effective speed" in block
    assert "![latency relative to the plain net in eager PyTorch](plot.png)" in block
    png = smoke_run / "plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100
