"""Rendering from results files alone: a small fixture record, the committed
docs/results/benchmarks.json (which must reproduce the committed block of docs/benchmarks.md), the
metric names shared by writer and renderer, and the targets' verdicts."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from repvgg_lab.bench import DOC_BLOCKS
from repvgg_lab.bench import keys as k
from repvgg_lab.bench.markdown import flat_report, render_markdown, render_markdown_from_record
from repvgg_lab.bench.render import BLOCK, doc_paths, render
from repvgg_lab.bench.result import targets
from repvgg_lab.bench.settings import PROFILES
from repvgg_lab.results import generated_blocks, read_results

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "results" / "benchmarks.json"
DOC = REPO / "docs" / "benchmarks.md"
SETTINGS = replace(PROFILES["smoke"], convert_models=("repvgg_b3",), compile_backend="inductor")
WINDOW = {"wall_s": 2.0, "load_before": 0.5, "load_after": 0.75, "foreign_share": 0.25}


def _latency_metrics(name: str, batch: int) -> dict[str, float]:
    m = {
        k.batch_key(name, batch, stat): v
        for stat, v in (("compile_s", 4.5), ("max_rel_diff", 1e-6))
    }
    for i, v in enumerate(k.VARIANTS):
        m[k.latency_key(name, batch, v)] = 10.0 + i
        m[k.latency_key(name, batch, v, "min_ms")] = 9.0 + i
        m[k.latency_key(name, batch, v, "gflops")] = 50.0 - i
        if v != k.BASELINE:
            m[k.ratio_key(name, batch, v)] = (10.0 + i) / 11.0
    m[k.batch_key(name, batch, "fastest_gflops")] = 50.0
    m[k.batch_key(name, batch, "fastest_over_peak")] = 0.5
    return {**m, k.gmacs_key(name, "plain"): 0.2, k.gmacs_key(name, "multibranch"): 0.3}


def _metrics() -> dict[str, float]:
    m = _latency_metrics("repvgg_a0", 1)
    stats = {"ours_s": 0.25, "timm_s": 1.25, "ratio_vs_timm": 0.2, "ours_min_s": 0.24}
    stats |= {"timm_min_s": 1.2, "ours_cpu_s": 0.5, "timm_cpu_s": 2.0, "kernel_rel_diff": 1.5e-7}
    m |= {k.convert_key("repvgg_b3", stat): v for stat, v in stats.items()}
    m |= {k.PEAK_GFLOPS: 100.0, k.PEAK_N: 128, k.matmul_key("torch", 128): 100.0}
    train = {"bare_step_ms": 160.0, "lightning_step_ms": 176.0, "lightning_overhead": 1.1}
    train |= {"lightning_overhead_with_setup": 1.2, "bare_total_s": 5.0, "lightning_total_s": 6.0}
    train |= {"lightning_fixed_ms_per_step": 2.5, "lightning_overhead_predicted": 1.015625}
    m |= {k.train_key(stat): v for stat, v in train.items()}
    m |= {
        k.train_key(s, tiny=True): v for s, v in (("bare_step_ms", 2.0), ("lightning_step_ms", 4.5))
    }
    return m


def fixture_record() -> dict[str, Any]:
    """A small hand-made results record: one model of each section, round numbers."""
    windows = [k.RUN, k.convert_window("repvgg_b3"), k.latency_window("repvgg_a0", 1)]
    windows += [k.matmul_window(128), k.train_window(), k.train_window(tiny=True)]
    steady = {"bare": [1.0, 2.0], "lightning": [1.1, 2.4]}
    results = {
        "created": "2026-01-02T03:04:05+00:00",
        "sections": ["convert", "latency", "train"],
        "settings": asdict(SETTINGS),
        "gpu": "not run",
        "metrics": _metrics(),
        "labels": {k.PEAK_LIBRARY: "torch", k.batch_key("repvgg_a0", 1, "fastest"): "onnxruntime"},
        "targets": [],
        "windows": dict.fromkeys(windows, WINDOW),
        "errors": {},
        "details": {k.train_window(): {"steady": steady}},
    }
    machine = {"cpu": "Test CPU", "cpu_capability": "AVX2", "logical_cores": 4, "threads": 2}
    machine |= {"memory_gib": 16.0, "python": "3.11", "torch": "2.x", "onnxruntime": "1.x"}
    machine |= {"timm": "1.x", "pytorch_lightning": "2.x"}
    command = "python scripts/bench.py --smoke --out x.json"
    return {
        "command": command,
        "date": "2026-01-02 03:04 UTC",
        "machine": machine,
        "results": results,
    }


def test_fixture_record_renders_every_section() -> None:
    body = render_markdown_from_record(fixture_record())
    assert body.startswith("## Latest results\n") and not body.endswith("\n")
    assert "Measured 2026-01-02T03:04:05+00:00 with `python scripts/bench.py --smoke" in body
    assert "| CPU | Test CPU (AVX2) |" in body and "| cores / torch threads | 4 / 2 |" in body
    assert (
        "| repvgg_b3 | 0.25 | 1.25 | **0.20×** | 0.5 / 2 | 1.5e-07 | 25 % (load 0.5→0.8) |" in body
    )
    # Latency cells: median (ratio to the baseline); the baseline's own ratio is 1.
    assert "| repvgg_a0 | 1 | 10.0 (0.91) | 11.0 (1) | 12.0 (1.09) | 13.0 (1.18) |" in body
    assert "![latency relative to the plain net in eager PyTorch](benchmarks.png)" in body
    assert "| repvgg_a0 | 1 | 4.5 |  |" in body  # compile time, no error
    assert "| repvgg_a0 | 1 | plain, ONNX Runtime | 50 | 50 % |" in body
    assert "**100 GFLOP/s**" in body and "reached by torch at n = 128" in body
    assert "| Lightning / bare (paired median) | **1.100×** | 1.200× |" in body
    assert "(repetitions: 1.100, 1.200)" in body
    assert "GPU: not run on the measuring machine; section skipped." in body


def test_targets_say_missed_whenever_measured_exceeds_the_limit() -> None:
    record = fixture_record()
    body = render_markdown_from_record(record)
    rows = [line for line in body.splitlines() if line.startswith("| ") and "| ≤ " in line]
    # A target is listed where its section ran: the fixture ran convert, latency and train.
    ran = record["results"]["sections"]
    assert len(rows) == sum(key.split("/")[0] in ran for _, key, _ in k.TARGETS) == 4
    assert rows[0].endswith("| 0.2 | ≤ 0.5 | **holds** |")
    assert rows[1].endswith("| 1.27 | ≤ 0.7 | **missed** |")  # onnxruntime / eager
    assert rows[2].endswith("| 1.1 | ≤ 1.05 | **missed** |")  # Lightning / bare
    metrics = {key: limit for _, key, limit in k.TARGETS}
    assert [t["holds"] for t in targets(metrics)] == [True] * len(k.TARGETS)  # limit itself holds
    above = {key: limit * 1.001 for key, limit in metrics.items()}
    assert [t["holds"] for t in targets(above)] == [False] * len(k.TARGETS)
    assert [t["holds"] for t in targets({})] == [None] * len(k.TARGETS)


def test_committed_results_reproduce_the_committed_block() -> None:
    name, renderer = DOC_BLOCKS[BLOCK]
    record = read_results(REPO / "docs" / "results" / name)
    assert {"command", "date", "machine", "results"} <= set(record)
    assert renderer(record) == generated_blocks(DOC.read_text(encoding="utf-8"))[BLOCK]


def test_committed_results_states_missed_targets() -> None:
    block = generated_blocks(DOC.read_text(encoding="utf-8"))[BLOCK]
    results = read_results(COMMITTED)["results"]
    for t in targets(results["metrics"]):
        if t["key"].split("/")[0] not in results["sections"]:
            assert f"`{t['key']}`" not in block  # another file's target
            continue
        row = next(line for line in block.splitlines() if f"`{t['key']}`" in line)
        if t["value"] is None:
            assert row.endswith("| not measured |")  # never shown as met
        elif t["value"] > t["limit"]:
            assert f"| {t['target']} |" in block
            assert row.endswith("| **missed** |")


def _all_keys(s: dict[str, Any]) -> set[str]:
    """Every metric name the key functions make for the settings `s` of a CPU run."""
    names = {k.PEAK_GFLOPS, k.PEAK_N}
    for name in s["convert_models"]:
        stats = ["ratio_vs_timm", "kernel_rel_diff"]
        stats += [f"{side}_{u}" for side in k.CONVERTERS for u in ("s", "min_s", "cpu_s")]
        names |= {k.convert_key(name, stat) for stat in stats}
    names |= {k.matmul_key(lib, n) for lib in k.MATMUL_LIBRARIES for n in s["matmul_sizes"]}
    for name in s["latency_models"]:
        names |= {k.gmacs_key(name, form) for form in ("plain", "multibranch")}
        for b in s["batches"]:
            stats = ("compile_s", "max_rel_diff", "fastest_gflops", "fastest_over_peak")
            names |= {k.batch_key(name, b, stat) for stat in stats}
            for v in k.VARIANTS:
                names |= {k.latency_key(name, b, v, unit) for unit in ("ms", "min_ms", "gflops")}
                names |= {k.ratio_key(name, b, v)} if v != k.BASELINE else set()
            if name in s.get("int8_models", ()):
                names |= {k.latency_key(name, b, k.INT8, u) for u in ("ms", "min_ms", "gflops")}
                names |= {k.ratio_key(name, b, k.INT8), k.int8_ratio_key(name, b)}
    train = ["lightning_overhead", "lightning_overhead_with_setup", "lightning_fixed_ms_per_step"]
    train += ["lightning_overhead_predicted", "bare_total_s", "lightning_total_s"]
    names |= {k.train_key(stat) for stat in train}
    for tiny in (False, True):
        names |= {k.train_key(f"{loop}_step_ms", tiny) for loop in ("bare", "lightning")}
    return names


def test_committed_metric_names_are_the_key_functions_names() -> None:
    """The names written by the run that made the docs are exactly those the renderer asks for."""
    results = read_results(COMMITTED)["results"]
    assert set(results["metrics"]) == _all_keys(results["settings"])


def test_renderer_reads_only_what_the_writer_wrote() -> None:
    """Dropping any metric of the committed run changes or breaks the doc: the renderer reads
    them by the writer's names (a misspelt name would render the same with or without it)."""
    report = flat_report(read_results(COMMITTED))
    full = render_markdown(report)
    for key in (k.ratio_key("rmnet_resnet18", 8, "onnxruntime"), k.train_key("bare_total_s")):
        trimmed = copy.deepcopy(report)
        del trimmed["metrics"][key]
        with pytest.raises(KeyError):
            render_markdown(trimmed)
    trimmed = copy.deepcopy(report)
    del trimmed["metrics"][k.batch_key("repvgg_a0", 8, "compile_s")]
    assert render_markdown(trimmed) != full


def test_render_replaces_only_the_block(tmp_path: Path) -> None:
    json_path = tmp_path / "results" / "bench.json"
    json_path.parent.mkdir()
    json_path.write_text(json.dumps(fixture_record()))
    md, png = doc_paths(json_path)
    assert (md, png) == (tmp_path / "bench.md", tmp_path / "bench.png")
    md.write_text(
        f"# Intro kept\n\n<!-- BEGIN GENERATED: {BLOCK} -->\nSTALE\n"
        f"<!-- END GENERATED: {BLOCK} -->\n\nOutro kept\n"
    )
    render(json_path)
    text = md.read_text()
    assert text.startswith("# Intro kept\n") and text.endswith("\nOutro kept\n")
    assert "STALE" not in text
    assert generated_blocks(text)[BLOCK] == render_markdown(flat_report(fixture_record()), png.name)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_creates_a_doc_or_appends_the_block(tmp_path: Path) -> None:
    json_path = tmp_path / "bench.json"
    json_path.write_text(json.dumps(fixture_record()))
    fresh = render(json_path, tmp_path / "new.md", tmp_path / "plot.png")
    assert generated_blocks(fresh.read_text())[BLOCK].startswith("## Latest results")
    notes = tmp_path / "notes.md"
    notes.write_text("# My notes\n")
    render(json_path, notes, tmp_path / "plot.png")
    kept = notes.read_text()
    assert kept.startswith("# My notes\n\n<!-- BEGIN GENERATED: ")
    assert list(generated_blocks(kept)) == [BLOCK] and "(plot.png)" in kept
