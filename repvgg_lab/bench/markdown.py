"""The Markdown of docs/benchmarks.md's generated block, rendered from the results file alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.result import targets, verdict
from repvgg_lab.bench.settings import DEFAULT_SECTIONS
from repvgg_lab.results import markdown_table

PNG_NAME = "benchmarks.png"


def flat_report(record: dict[str, Any]) -> dict[str, Any]:
    """One dict of a results file's record: its results plus command, date and machine."""
    report = {**record["results"], **{key: record[key] for key in ("command", "date", "machine")}}
    # write_json stores non-finite floats as strings ("nan"); read them back as floats.
    report["metrics"] = {key: float(v) for key, v in report["metrics"].items()}
    return report


def _f(value: float | None, digits: int = 3) -> str:
    """`digits` significant digits ("—" when unknown or not finite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def pct(value: float | None) -> str:
    """A share as a whole percentage ("—" when unknown)."""
    return "—" if value is None else f"{100 * value:.0f} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table followed by a blank line."""
    return [*markdown_table(header, rows), ""]


def _window_note(report: dict[str, Any], key: str) -> str:
    """Foreign CPU share and load average over one measurement window."""
    w = report["windows"].get(key)
    if not w:
        return "—"
    return f"{pct(w['foreign_share'])} (load {w['load_before']:.1f}→{w['load_after']:.1f})"


def _md_conditions(report: dict[str, Any]) -> list[str]:
    """When, how and on what machine the run was measured."""
    mc, run, s = report["machine"], report["windows"].get(k.RUN, {}), report["settings"]
    versions = (
        f"python {mc['python']}, torch {mc['torch']}, onnxruntime {mc['onnxruntime']}, "
        f"timm {mc['timm']}, lightning {mc['pytorch_lightning']}"
    )
    rounds = (
        f"{s['size']}×{s['size']} fp32; latency median of {s['latency_rounds']} rounds after "
        f"{s['latency_warmup']} warm-up; conversion median of {s['convert_rounds']}"
    )
    rows = [
        ["CPU", f"{mc['cpu']} ({mc['cpu_capability']})"],
        ["cores / torch threads", f"{mc['logical_cores']} / {mc['threads']}"],
        ["memory", f"{_f(mc['memory_gib'])} GiB"],
        ["GPU", str(report["gpu"])],
        ["versions", versions],
        [
            "load average (1 min) before → after",
            f"{_f(run.get('load_before'), 2)} → {_f(run.get('load_after'), 2)}",
        ],
        [
            "other processes' CPU share during the run",
            f"{pct(run.get('foreign_share'))} of {mc['logical_cores']} cores",
        ],
        ["run time", f"{_f(run.get('wall_s'), 3)} s"],
        ["input, rounds", rounds],
    ]
    measured = f"Measured {report['created']} with `{report['command']}`."
    return [measured, "", *_table(["machine", "value"], rows)]


def _convert_note(report: dict[str, Any], name: str) -> str | None:
    """The figures behind the conversion target's verdict (None when not measured)."""
    m = report["metrics"]
    if k.convert_key(name, "ours_s") not in m:
        return None
    ours_cpu, timm_cpu = m[k.convert_key(name, "ours_cpu_s")], m[k.convert_key(name, "timm_cpu_s")]
    return (
        f"Conversion of {name}: ours {_f(m[k.convert_key(name, 'ours_s')])} s, timm "
        f"{_f(m[k.convert_key(name, 'timm_s')])} s wall; CPU time {_f(ours_cpu)} s vs "
        f"{_f(timm_cpu)} s (ratio {ours_cpu / timm_cpu:.2f}); foreign CPU "
        f"{_window_note(report, k.convert_window(name))}."
    )


def _onnx_note(report: dict[str, Any], name: str, batch: int, limit: float) -> str | None:
    """The GFLOP/s behind the ONNX Runtime target's verdict (None when not measured)."""
    m, peak = report["metrics"], report["metrics"].get(k.PEAK_GFLOPS)
    if k.latency_key(name, batch, "onnxruntime") not in m or not peak:
        return None
    eager = m[k.latency_key(name, batch, k.BASELINE, "gflops")]
    ort = m[k.latency_key(name, batch, "onnxruntime", "gflops")]
    line = (
        f"{name} at batch {batch}: eager PyTorch reaches {_f(eager)} GFLOP/s "
        f"({pct(eager / peak)} of the matmul peak), ONNX Runtime {_f(ort)} "
        f"({pct(ort / peak)}); {limit}× eager's time needs {_f(eager / limit)} GFLOP/s, "
        f"{pct(eager / limit / peak)} of the peak, for the whole net."
    )
    if k.ratio_key(name, batch, "compile_plain") in m:
        line += (
            " torch.compile, which also pre-packs the weights, runs at "
            f"{m[k.ratio_key(name, batch, 'compile_plain')]:.2f}× eager."
        )
    return line


def _train_note(report: dict[str, Any]) -> str | None:
    """Lightning's predicted and measured overhead, per repetition (None when not measured)."""
    m = report["metrics"]
    if k.train_key("lightning_fixed_ms_per_step") not in m:
        return None
    steady = report["details"][k.train_window()]["steady"]
    per_rep = ", ".join(
        f"{li / b:.3f}" for li, b in zip(steady["lightning"], steady["bare"], strict=True)
    )
    return (
        f"Lightning costs {_f(m[k.train_key('lightning_fixed_ms_per_step')])} ms per step more "
        f"than the bare loop on a one-layer net; with the bare step of "
        f"{_f(m[k.train_key('bare_step_ms')])} ms that predicts "
        f"{m[k.train_key('lightning_overhead_predicted')]:.3f}×; measured "
        f"{m[k.train_key('lightning_overhead')]:.3f}× (repetitions: {per_rep})."
    )


def _md_targets(report: dict[str, Any]) -> list[str]:
    """The targets table with a verdict per target, and the notes explaining them."""
    rows = []
    for t in targets(report["metrics"]):
        if t["key"].split("/")[0] not in report.get("sections", DEFAULT_SECTIONS):
            continue  # measured by a section this run left out (or one with a file of its own)
        word = verdict(t["holds"])
        cell = word if t["holds"] is None else f"**{word}**"
        rows.append([t["target"], f"`{t['key']}`", _f(t["value"]), f"≤ {t['limit']}", cell])
    header = ["target", "metric", "measured", "limit", "verdict"]
    notes = [
        _convert_note(report, "repvgg_b3"),
        _onnx_note(report, "repvgg_a0", 1, k.TARGETS[1][2]),
        _train_note(report),
    ]
    lines = [f"- {n}" for n in notes if n is not None]
    return ["### Targets", "", *_table(header, rows), *lines, *([""] if lines else [])]


def _md_convert(report: dict[str, Any]) -> list[str]:
    """The conversion-time table."""
    m, rows = report["metrics"], []
    for name in report["settings"]["convert_models"]:
        if k.convert_key(name, "ours_s") not in m:
            continue
        cpu = [_f(m[k.convert_key(name, f"{side}_cpu_s")]) for side in k.CONVERTERS]
        rows.append(
            [
                name,
                _f(m[k.convert_key(name, "ours_s")]),
                _f(m[k.convert_key(name, "timm_s")]),
                f"**{m[k.convert_key(name, 'ratio_vs_timm')]:.2f}×**",
                " / ".join(cpu),
                f"{m[k.convert_key(name, 'kernel_rel_diff')]:.1e}",
                _window_note(report, k.convert_window(name)),
            ]
        )
    if not rows:
        return []
    header = ["model", "ours", "timm", "ours / timm (paired median)", "CPU s ours / timm"]
    header += ["kernel gap", "foreign CPU (load)"]
    title = "### Conversion time (fp32 CPU, copy of the net, seconds)"
    return [title, "", *_table(header, rows)]


def latency_cases(report: dict[str, Any]) -> list[tuple[str, int]]:
    """(model, batch) of every latency measurement in the report, in settings order."""
    s, m = report["settings"], report["metrics"]
    return [
        (name, b)
        for name in s["latency_models"]
        for b in s["batches"]
        if k.latency_key(name, b, k.BASELINE) in m
    ]


def _latency_cell(m: dict[str, float], name: str, batch: int, variant: str) -> str:
    """Median ms of one runtime and, in brackets, its ratio to the baseline."""
    if k.latency_key(name, batch, variant) not in m:
        return "—"
    ratio = "1" if variant == k.BASELINE else f"{m[k.ratio_key(name, batch, variant)]:.2f}"
    return f"{m[k.latency_key(name, batch, variant)]:.1f} ({ratio})"


def _md_latency_table(report: dict[str, Any], png_name: str | None) -> list[str]:
    """The latency table of every runtime, and the plot's link."""
    m = report["metrics"]
    if not latency_cases(report):
        return []
    rows = [
        [name, str(b), *(_latency_cell(m, name, b, v) for v in k.VARIANTS)]
        + [_window_note(report, k.latency_window(name, b))]
        for name, b in latency_cases(report)
    ]
    header = ["model", "batch", *(k.VARIANT_LABELS[v] for v in k.VARIANTS), "foreign CPU"]
    lines = [
        "### CPU inference latency (ms, median; in brackets: time ÷ plain eager NCHW)",
        "",
        *_table(header, rows),
    ]
    if png_name:
        lines += [f"![latency relative to the plain net in eager PyTorch]({png_name})", ""]
    return lines


def _case_rows(
    report: dict[str, Any], present: str, cells: Callable[[str, int], list[str]]
) -> list[list[str]]:
    """Table rows (model, batch, *cells) of the latency cases whose entry `present` (a per-batch
    metric or label name) was recorded."""
    recorded = report["metrics"].keys() | report["labels"].keys()
    return [
        [name, str(b), *cells(name, b)]
        for name, b in latency_cases(report)
        if k.batch_key(name, b, present) in recorded
    ]


def _md_compile(report: dict[str, Any]) -> list[str]:
    """torch.compile's compile times (and errors)."""
    m, s, errors = report["metrics"], report["settings"], report["errors"]
    rows = _case_rows(
        report,
        "compile_s",
        lambda name, b: [
            _f(m[k.batch_key(name, b, "compile_s")]),
            errors.get(k.compile_error_key(name, b), ""),
        ],
    )
    if not rows:
        return []
    return [
        f"torch.compile (backend `{s['compile_backend']}`, freezing "
        f"{'on' if s.get('compile_freezing') else 'off'}; the on-disk cache starts empty, so the "
        "first compile pays for the shared kernels) compile time, excluded from latency:",
        "",
        *_table(["model", "batch", "compile s", "error"], rows),
    ]


def _md_peak(report: dict[str, Any]) -> list[str]:
    """The fastest runtime's effective speed beside the measured matmul peak."""
    m, labels = report["metrics"], report["labels"]
    rows = _case_rows(
        report,
        "fastest",
        lambda name, b: [
            k.VARIANT_LABELS[labels[k.batch_key(name, b, "fastest")]],
            _f(m[k.batch_key(name, b, "fastest_gflops")]),
            pct(m[k.batch_key(name, b, "fastest_over_peak")]),
        ],
    )
    if not rows:
        return []
    n = int(m.get(k.PEAK_N, 0))
    sizes = ", ".join(str(size) for size in report["settings"]["matmul_sizes"])
    return [
        f"Effective speed of the fastest runtime (2 × the MACs of the form it runs per image ÷ "
        f"median time) beside the measured fp32 matrix-multiply peak: "
        f"**{_f(m.get(k.PEAK_GFLOPS))} GFLOP/s** (best median over n = {sizes} of torch.mm and "
        f"ONNX Runtime's MatMul, reached by {labels.get(k.PEAK_LIBRARY)} at n = {n}; foreign "
        f"CPU {_window_note(report, k.matmul_window(n))}).",
        "",
        *_table(["model", "batch", "fastest", "GFLOP/s", "of matmul peak"], rows),
    ]


def _md_train(report: dict[str, Any]) -> list[str]:
    """The training-loop overhead table and the one-layer net's per-step cost."""
    m, s = report["metrics"], report["settings"]
    if k.train_key("lightning_overhead") not in m:
        return []
    rows = [
        ["bare PyTorch", _f(m[k.train_key("bare_step_ms")]), _f(m[k.train_key("bare_total_s")])],
        [
            "Lightning (`ClassifierModule`)",
            _f(m[k.train_key("lightning_step_ms")]),
            _f(m[k.train_key("lightning_total_s")]),
        ],
        [
            "Lightning / bare (paired median)",
            f"**{m[k.train_key('lightning_overhead')]:.3f}×**",
            f"{m[k.train_key('lightning_overhead_with_setup')]:.3f}×",
        ],
    ]
    return [
        "### Training loop overhead (CPU)",
        "",
        f"{s['train_model']} on digits at {s['train_size']}×{s['train_size']}, batch "
        f"{s['train_batch']}, SGD from `ClassifierModule.configure_optimizers`, "
        f"{s['train_steps']} steps, the first {s['train_warm_steps']} untimed; "
        f"{s['train_reps']} alternating repetitions, medians.",
        "",
        *_table(["loop", "ms / step", "whole run incl. setup, s"], rows),
        f"Foreign CPU during the repetitions: {_window_note(report, k.train_window())}. The same "
        f"loops on a one-layer net ({s['train_tiny_steps']} steps): bare "
        f"{_f(m[k.train_key('bare_step_ms', tiny=True)])} ms, Lightning "
        f"{_f(m[k.train_key('lightning_step_ms', tiny=True)])} ms per step, i.e. Lightning's own "
        f"cost is {_f(m[k.train_key('lightning_fixed_ms_per_step')])} ms per step (foreign CPU "
        f"{_window_note(report, k.train_window(tiny=True))}).",
        "",
    ]


def _md_gpu(report: dict[str, Any]) -> list[str]:
    """Every GPU metric, or why the section is empty."""
    gpu = {key: v for key, v in report["metrics"].items() if key.startswith(k.GPU_PREFIX)}
    lines = ["### GPU", ""]
    if not gpu:
        return lines + [f"GPU: {report['gpu']} on the measuring machine; section skipped.", ""]
    rows = [[key.removeprefix(k.GPU_PREFIX), _f(v, 4)] for key, v in sorted(gpu.items())]
    return lines + [f"Device: {report['gpu']}.", "", *_table(["metric", "value"], rows)]


def _md_branch_cost(report: dict[str, Any]) -> list[str]:
    """Train-time branch cost per net, set and mode, when the section ran."""
    m, s = report["metrics"], report["settings"]
    if "branch_sizes" not in s or not any(key.startswith("branch_cost/") for key in m):
        return []
    sizes = s["branch_sizes"]
    suffixes = [""] + [f"_{size}px" for size in sizes[1:]]
    rows = []
    for net in s["branch_nets"]:
        for branches in s["branch_sets"]:
            for mode in s["branch_modes"]:
                cells = [
                    _f(m.get(k.branch_cost_key(net, branches, mode, f"{stat}_over_plain{sfx}")))
                    for sfx in suffixes
                    for stat in ("time", "memory")
                ]
                if any(c != "—" for c in cells):
                    rows.append([net, f"{branches} {mode}", *cells])
    header = ["net", "branches"]
    header += [f"{stat} / plain, {size} px" for size in sizes for stat in ("time", "memory")]
    note = (
        f"One SGD step (momentum 0.9), train mode, batch {s['branch_batch']}, fp32, "
        f"{s['branch_threads']} threads: median over {s['branch_rounds']} alternated rounds of "
        "branched / plain; memory: bytes autograd saves in one forward (parameters excluded)."
    )
    return ["### Train-time branch cost", "", note, "", *_table(header, rows)]


def render_markdown(report: dict[str, Any], png_name: str | None = PNG_NAME) -> str:
    """The body of the generated block from a flat report (`flat_report`)."""
    lines = ["## Latest results", "", *_md_conditions(report), *_md_targets(report)]
    lines += _md_convert(report) + _md_latency_table(report, png_name)
    lines += _md_compile(report) + _md_peak(report) + _md_train(report) + _md_gpu(report)
    lines += _md_branch_cost(report)
    if report["errors"]:
        lines += ["### Errors recorded", ""]
        lines += [f"- `{key}`: {v}" for key, v in sorted(report["errors"].items())] + [""]
    return "\n".join(lines).strip("\n")


def render_markdown_from_record(record: dict[str, Any]) -> str:
    """The generated block's body from a whole results-file record (as `read_results` loads it)."""
    return render_markdown(flat_report(record))


def render_branch_cost_from_record(record: dict[str, Any]) -> str:
    """docs/any_cnn.md's branch-cost block: targets and the table of a `--sections
    branch_cost` results file, with the command, date and machine that measured it."""
    report = flat_report(record)
    lines = [*_md_targets(report), *_md_branch_cost(report)[2:]]
    lines.append(
        f"\nMeasured with `{report['command']}` on {report['date'][:10]} "
        f"({report['machine']['cpu']}); other processes used "
        f"{_window_note(report, k.RUN)} of the CPU over the run. Time ratios come from "
        "alternated rounds, so load hits both sides, but a busy machine still blurs them; the "
        "memory counts are exact whatever the load."
    )
    return "\n".join(lines)
