"""`python deploy.py ...` as a subprocess: one full run whose every file is loaded back and run,
and bad inputs that must end in one line on stderr with the output folder untouched."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

from repvgg_lab.deploy import deploy
from repvgg_lab.deploy.report import render
from repvgg_lab.models import create_model, load_pretrained
from repvgg_lab.reparam import rel_max
from tests.helpers.contract import DRIFT_METRICS
from tests.helpers.wandb_records import artifacts, summary

FILES = ("model.onnx", "model.pt2", "model.safetensors", "metrics.json", "report.json")
DESIGN_NAMES = (
    *DRIFT_METRICS,
    "params/train",
    "params/deploy",
    "macs/train",
    "macs/deploy",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, a0, save_lightning, cli):
    """One successful CLI run on a Lightning checkpoint; files land in the Hydra run folder."""
    folder = tmp_path_factory.mktemp("cli")
    ckpt = save_lightning(a0, folder / "last.ckpt")  # records input_size=32
    run_dir = folder / "run"
    proc = cli(
        f"ckpt={ckpt}",
        f"hydra.run.dir={run_dir}",
        "latency.batch_sizes=[1,8]",
        "latency.rounds=2",
        "latency.warmup=1",
        "threads=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run_dir


@pytest.fixture(scope="module")
def truth(a0):
    """The multi-branch net in float64 on a batch that differs from the deploy's own."""

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return copy.deepcopy(a0).double()(x.double())

    return evaluate


def _x(batch: int, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(11))


def test_every_file_written_and_table_printed(run) -> None:
    proc, run_dir = run
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file() and p.name in FILES) == sorted(
        FILES
    )
    assert not list(run_dir.glob(".deploy-*"))
    # The console table shows the same numbers as report.json.
    report = json.loads((run_dir / "report.json").read_text())
    assert "drift/max_abs" in proc.stdout and "onnx/vs_fp64/rel_max" in proc.stdout
    assert f"{report['metrics']['params/deploy']:,}" in proc.stdout


def test_the_deploy_has_its_own_wandb_run_and_summary(run) -> None:
    proc, run_dir = run
    wandb_dir = next(run_dir.glob("wandb/offline-run-*"))
    logged = sorted((kind, f) for kind, files in artifacts(wandb_dir).values() for f in files)
    assert logged == [
        ("model", "model.onnx"),
        ("report", "metrics.json"),
        ("report", "report.json"),
    ]
    report = json.loads((run_dir / "report.json").read_text())
    deploy_rel = report["metrics"]["drift/vs_fp64/deploy_rel_max"]
    assert summary(wandb_dir)["drift/vs_fp64/deploy_rel_max"] == pytest.approx(deploy_rel)
    # The console ends with the project's summary, the drift in scientific notation.
    last = proc.stdout.split("repvgg_lab deploy")[-1]
    assert f"drift vs float64: drift/vs_fp64/deploy_rel_max {deploy_rel:.2e}" in last
    assert f"run folder: {run_dir}" in last


def test_report_has_the_stable_metric_names(run) -> None:
    _, run_dir = run
    report = json.loads((run_dir / "report.json").read_text())
    m = report["metrics"]
    for name in DESIGN_NAMES:
        assert isinstance(m[name], int | float) and math.isfinite(m[name]), name
    for batch in (1, 8):
        for net in ("train", "deploy", "onnx"):
            assert m[f"latency/bs{batch}/{net}_ms"] > 0
            assert len(report["latency"][f"bs{batch}"][net]["times_ms"]) == 2  # latency.rounds
    # Published RepVGG-A0 counts with a 10-class head (timm agrees): 7.84M -> 7.04M.
    assert round(m["params/train"] / 1e6, 2) == 7.84 and round(m["params/deploy"] / 1e6, 2) == 7.04
    assert m["macs/deploy"] < m["macs/train"]
    assert m["drift/top1_agree"] == 1.0 and m["drift/underflow_frac"] == 0.0
    assert m["drift/vs_fp64/deploy_rel_max"] <= report["settings"]["tolerance"]
    assert report["settings"]["input_size"] == 32  # taken from the checkpoint
    assert json.loads((run_dir / "metrics.json").read_text()) == m


def test_latency_table_is_consistent_and_says_how_loaded_the_machine_was(run) -> None:
    proc, run_dir = run
    report = json.loads((run_dir / "report.json").read_text())
    load, m = report["load"], report["metrics"]
    assert isinstance(load["load_avg_1min"], float) and load["cores"] >= 1
    assert load["busy"] == (load["load_avg_1min"] > load["cores"])
    shown = " ".join(proc.stdout.split())  # the table's caption wraps at the console's width
    assert f"1-minute load average before timing {load['load_avg_1min']:.2f}" in shown
    assert ("MACHINE BUSY" in shown) == load["busy"]
    # train/deploy is the ratio of the two medians printed beside it.
    for batch in (1, 8):
        train, deploy_ms = m[f"latency/bs{batch}/train_ms"], m[f"latency/bs{batch}/deploy_ms"]
        assert m[f"latency/bs{batch}/speedup"] == pytest.approx(train / deploy_ms, rel=1e-12)


def test_a_busy_machine_is_named_in_the_latency_table(run) -> None:
    _, run_dir = run
    report = json.loads((run_dir / "report.json").read_text())
    report["load"] = {"load_avg_1min": 5.5, "cores": 2, "busy": True}
    console = Console(record=True)
    console.print(render(report))
    text = " ".join(console.export_text().split())
    assert "MACHINE BUSY, the times are not reliable" in text and "5.50 on 2 cores" in text


def test_onnx_is_plain_dynamic_and_as_exact_as_pytorch(run, truth) -> None:
    _, run_dir = run
    proto = onnx.load(str(run_dir / "model.onnx"))
    assert {n.op_type for n in proto.graph.node} == {"Conv", "Relu", "ReduceMean", "Gemm"}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _x(3, 40, 48)  # batch, height and width other than the export's
    y = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert rel_max(truth(x), y) <= 1e-5

    # Acceptance: ONNX Runtime no further from float64 than 1.5x the plain PyTorch net, on the
    # deploy's own batch (the report) and on an independent one.
    m = json.loads((run_dir / "report.json").read_text())["metrics"]
    assert m["onnx/vs_fp64/rel_max"] <= 1.5 * m["drift/vs_fp64/deploy_rel_max"]
    assert m["onnx/vs_fp64/rel_l2"] <= 1.5 * m["drift/vs_fp64/deploy_rel_l2"]
    plain = load_pretrained(
        create_model("repvgg_a0", num_classes=10, deploy=True).eval(), run_dir / "model.safetensors"
    )
    x = _x(8)
    with torch.no_grad():
        err_torch = rel_max(truth(x), plain(x))
    err_onnx = rel_max(truth(x), torch.from_numpy(session.run(None, {"input": x.numpy()})[0]))
    assert err_onnx <= 1.5 * err_torch


def test_torch_export_program_loads_and_runs(run, truth) -> None:
    _, run_dir = run
    program = torch.export.load(str(run_dir / "model.pt2")).module()
    for batch in (1, 3):  # the batch dimension is dynamic
        x = _x(batch)
        with torch.no_grad():
            assert rel_max(truth(x), program(x)) <= 1e-5


def test_safetensors_load_into_a_deploy_model(run, truth) -> None:
    _, run_dir = run
    path = run_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["repvgg_lab"])
    assert meta["model_name"] == "repvgg_a0" and meta["num_classes"] == 10 and meta["deploy"]
    net = load_pretrained(create_model("repvgg_a0", num_classes=10, deploy=True), path).eval()
    x = _x(2)
    with torch.no_grad():
        assert rel_max(truth(x), net(x)) <= 1e-5


def test_own_output_is_accepted_as_ckpt(run, tmp_path) -> None:
    _, run_dir = run
    report = deploy(run_dir / "model.safetensors", out_dir=tmp_path, batch_sizes=(), verify_batch=2)
    assert report["source"]["model"] == "repvgg_a0" and report["source"]["deploy_form"]
    assert report["settings"]["input_size"] == 32
    first, second = (
        load_file(run_dir / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_pickle(tmp: Path, a0) -> list[str]:
    torch.save(
        {"state_dict": a0.state_dict(), "callback": _RunsCode(tmp / "ran")}, tmp / "evil.ckpt"
    )
    return [f"ckpt={tmp / 'evil.ckpt'}"]


def _a0_file(tmp: Path, a0) -> Path:
    torch.save(a0.state_dict(), tmp / "a0.pth")
    return tmp / "a0.pth"


def _unknown_model(tmp: Path, a0) -> list[str]:
    torch.save(a0.state_dict(), tmp / "a0.pth")
    return [f"ckpt={tmp / 'a0.pth'}", "model=repvgg_z9"]


CLI_BAD = {
    "missing path": (lambda tmp, a0: [f"ckpt={tmp / 'nowhere.ckpt'}"], "checkpoint not found"),
    "pickle that runs code": (_code_pickle, "refused to unpickle"),
    "unknown model": (_unknown_model, "unknown model 'repvgg_z9'"),
    "no ckpt=": (lambda tmp, a0: [], "missing required option ckpt="),
    "int4": (
        lambda tmp, a0: [f"ckpt={tmp / 'x.ckpt'}", "quantize=int4"],
        "quantize=int4 is not an option; choose one of int8, none",
    ),
    "int8 without verify.data": (
        lambda tmp, a0: [f"ckpt={_a0_file(tmp, a0)}", "quantize=int8"],
        "quantize=int8 needs real images",
    ),
    "no calibration batches": (
        lambda tmp, a0: [
            f"ckpt={_a0_file(tmp, a0)}",
            "quantize=int8",
            "verify.data=digits",
            "quantize.calibration_batches=0",
        ],
        "quantize.calibration_batches must be an integer >= 1, got 0",
    ),
    "unknown logger": (
        lambda tmp, a0: [f"ckpt={tmp / 'x.ckpt'}", "logger=tensorboard"],
        "logger must be one of wandb, none, got 'tensorboard'",
    ),
}


@pytest.mark.parametrize("case", CLI_BAD)
def test_bad_input_one_line_no_traceback(case, tmp_path, a0, cli, out_dir, unchanged) -> None:
    make, message = CLI_BAD[case]
    args = make(tmp_path, a0)
    proc = cli(*args, f"out_dir={out_dir}", f"hydra.run.dir={tmp_path / 'hydra' / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "ran").exists()  # nothing from the file was executed
    unchanged()
    assert not (tmp_path / "hydra").exists()  # the run folder Hydra made for it is gone too
