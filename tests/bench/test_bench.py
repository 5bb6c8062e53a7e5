"""scripts/bench.py in its tiny `--smoke` configuration: the JSON carries every documented key
with sane values, and `--render` turns it into the markdown block and a real PNG. No timings are
asserted: speed targets are checked by running the script, not by tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.helpers.cli import load_script, run_script

bench = load_script("bench")
SMOKE = bench.PROFILES["smoke"]


@pytest.fixture(scope="module")
def smoke_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `--smoke` run of the CLI (convert, latency, train) on one thread."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = ["--smoke", "--threads", "1", "--out", str(out)]
    done = run_script("scripts/bench.py", *args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def report(smoke_json: Path) -> dict[str, Any]:
    return json.loads(smoke_json.read_text())


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_conversion_keys(report: dict[str, Any]) -> None:
    m = report["metrics"]
    for name in SMOKE.convert_models:
        p = f"convert/{name}"
        for key in ("ours_s", "timm_s", "ratio_vs_timm", "ours_cpu_s", "timm_cpu_s"):
            assert _positive(m[f"{p}/{key}"]), key
        # One round: the paired median is that round's ratio.
        assert m[f"{p}/ratio_vs_timm"] == pytest.approx(m[f"{p}/ours_s"] / m[f"{p}/timm_s"])
        assert m[f"{p}/kernel_rel_diff"] < 1e-5  # both converters produced the same kernels
        assert report["windows"][p]["wall_s"] > 0


def test_latency_keys(report: dict[str, Any]) -> None:
    m, details = report["metrics"], report["details"]
    per_size = [
        m[f"peak/matmul_fp32/{lib}_n{n}_gflops"]
        for n in SMOKE.matmul_sizes
        for lib in ("torch", "onnxruntime")
    ]
    assert all(_positive(g) for g in per_size)
    assert m["peak/matmul_fp32_gflops"] == max(per_size)
    for name in SMOKE.latency_models:
        for batch in SMOKE.batches:
            key = f"latency/{name}/b{batch}"
            # Every runtime computes the multi-branch net's function.
            assert m[f"{key}/max_rel_diff"] < 1e-4
            assert (
                _positive(m[f"{key}/compile_s"]) and f"{key}/compile_plain" not in report["errors"]
            )
            work = []
            for v in bench.VARIANTS:
                assert _positive(m[f"{key}/{v}_ms"]), v
                assert m[f"{key}/{v}_min_ms"] <= m[f"{key}/{v}_ms"]
                assert len(details[key][v]) == SMOKE.latency_rounds
                if v != "multibranch":
                    work.append(m[f"{key}/{v}_gflops"] * m[f"{key}/{v}_ms"])
                if v != bench.BASELINE:
                    assert _positive(m[f"{key}/{v}_over_{bench.BASELINE}"]), v
            # Every plain runtime does the plain net's work: rate x time is one constant. The
            # multi-branch form of RepVGG does more (its 1x1 branches).
            assert max(work) == pytest.approx(min(work), rel=1e-9)
            assert m[f"latency/{name}/multibranch_gmacs"] > m[f"latency/{name}/plain_gmacs"]
            fastest = report["labels"][f"{key}/fastest"]
            assert m[f"{key}/{fastest}_ms"] == min(m[f"{key}/{v}_ms"] for v in bench.VARIANTS)
            assert m[f"{key}/fastest_gflops"] == m[f"{key}/{fastest}_gflops"]
            assert m[f"{key}/fastest_over_peak"] == pytest.approx(
                m[f"{key}/fastest_gflops"] / m["peak/matmul_fp32_gflops"]
            )
            window = report["windows"][key]
            assert window["foreign_share"] is None or window["foreign_share"] >= 0


def test_train_keys(report: dict[str, Any]) -> None:
    m = report["metrics"]
    for key in (
        "train/bare_step_ms",
        "train/lightning_step_ms",
        "train/lightning_overhead",
        "train/lightning_overhead_with_setup",
    ):
        assert _positive(m[key]), key
    for key in ("train/tiny/bare_step_ms", "train/tiny/lightning_step_ms"):
        assert _positive(m[key]), key
    # Lightning's own cost per step may come out slightly negative on a noisy machine.
    assert math.isfinite(m["train/lightning_fixed_ms_per_step"])
    assert math.isfinite(m["train/lightning_overhead_predicted"])
    # The totals include setup and the warm-up steps, the step times do not.
    timed = SMOKE.train_steps - SMOKE.train_warm_steps
    assert m["train/bare_total_s"] * 1e3 > m["train/bare_step_ms"] * timed


def test_machine_and_targets(report: dict[str, Any]) -> None:
    machine = report["machine"]
    assert machine["cpu"] and machine["threads"] == 1 and machine["torch"] == torch.__version__
    assert machine["logical_cores"] >= 1
    if not torch.cuda.is_available():
        assert report["gpu"] == "not available" and not any(
            k.startswith("gpu/") for k in report["metrics"]
        )
    run = report["windows"]["run"]
    assert run["load_before"] >= 0 and run["wall_s"] > 0
    by_key = {t["key"]: t for t in report["targets"]}
    assert set(by_key) == {key for _, key, _ in bench.TARGETS}
    assert by_key["convert/repvgg_b3/ratio_vs_timm"]["holds"] is None  # not in --smoke
    onnx = by_key["latency/repvgg_a0/b1/onnxruntime_over_eager_plain"]
    assert onnx["holds"] == (onnx["value"] <= 0.7)


def test_render_writes_block_and_png_and_keeps_prose(smoke_json: Path, tmp_path: Path) -> None:
    md, png = tmp_path / "doc.md", tmp_path / "plot.png"
    md.write_text(f"# Intro kept\n\n{bench.MARK_BEGIN}\nSTALE\n{bench.MARK_END}\n\nOutro kept\n")
    bench.render(smoke_json, md, png)
    text = md.read_text()
    assert text.startswith("# Intro kept") and text.rstrip().endswith("Outro kept")
    assert "STALE" not in text and text.count(bench.MARK_BEGIN) == 1
    for _, key, _ in bench.TARGETS:
        assert f"`{key}`" in text
    assert "repvgg_a0" in text and "![latency" in text and "plot.png" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100
    fresh = tmp_path / "new.md"
    bench.render(smoke_json, fresh, png)
    assert bench.MARK_BEGIN in fresh.read_text()
    unmarked = tmp_path / "notes.md"
    unmarked.write_text("# My notes\n")
    bench.render(smoke_json, unmarked, png)
    kept = unmarked.read_text()
    assert kept.startswith("# My notes\n") and kept.count(bench.MARK_BEGIN) == 1


def test_failed_compile_is_recorded_not_raised() -> None:
    call, seconds, error = bench.compile_net(torch.nn.Linear(2, 2), torch.randn(1, 2), "no_such")
    assert call is None and seconds >= 0
    assert error.startswith("InvalidBackend") and "no_such" in error


def test_gpu_section_code_path_runs_on_cpu() -> None:
    """The GPU section is written for CUDA; on CPU with tiny sizes it must still produce its keys
    (the only check it can get on a machine without a GPU)."""
    run = bench.Run()
    bench.bench_gpu_section(SMOKE, run, device="cpu")
    m = run.metrics
    for model in SMOKE.gpu_models:
        for mode in ("fp32", "bf16_cl"):
            assert _positive(m[f"gpu/train/{model}/{mode}_images_per_s"])
        for dtype in ("fp16", "bf16"):
            assert _positive(m[f"gpu/infer/{model}/plain_{dtype}_images_per_s"])
            assert _positive(m[f"gpu/infer/{model}/plain_{dtype}_over_peak"])
    assert all(_positive(m[f"gpu/peak/matmul_{d}_tflops"]) for d in ("fp32", "bf16", "fp16"))


def test_cpu_window_counts_an_unreaped_child_as_foreign() -> None:
    """Work by another process shows up as foreign CPU; our own work does not."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"]
    )
    try:
        time.sleep(0.5)  # let the child start spinning
        with bench.CpuWindow() as w:
            time.sleep(1.0)
    finally:
        child.kill()
        child.wait()
    record = w.record()
    if record["foreign_cores"] is None:
        pytest.skip("no /proc/stat on this system")
    assert record["foreign_cores"] > 0.2
    assert record["own_cores"] < 0.2  # we slept
