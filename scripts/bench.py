"""The project's benchmarks: conversion time, CPU inference latency, training overhead, GPU speed.

    python scripts/bench.py --out docs/benchmarks.json            # full run (tens of minutes)
    python scripts/bench.py --quick --out docs/benchmarks.json    # <= 10 min on a quiet 2-core CPU
    python scripts/bench.py --render docs/benchmarks.json         # -> docs/benchmarks.md + .png
    python scripts/bench.py --quick --out docs/benchmarks.json --render   # run, then render

Every comparison is measured side by side: after warm-up, each round times every contender once
(the order rotates), and the tables give medians and the median of the per-round ratios, so a load
change on a shared machine hits all contenders alike. The JSON records the machine, the load
average and the CPU share that other processes took during each measurement (from /proc/stat);
the markdown and the plot are rendered from the JSON alone, so the numbers in the doc are the
measured ones.

Sections (``--sections``):
  convert  repvgg_lab.reparameterize vs timm's reparameterize_model (scripts/bench_convert.py)
  latency  multi-branch net, plain net in eager NCHW / channels_last, torch.compile, ONNX Runtime;
           plus a measured fp32 matrix-multiply peak to judge the effective GFLOP/s against
  train    the project's Lightning loop (ClassifierModule) vs a bare PyTorch loop, same steps
  gpu      training and inference images/s (only where CUDA is available)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import functools
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from repvgg_lab.deploy.export import export_onnx
from repvgg_lab.deploy.verify import OnnxRunner
from repvgg_lab.models import create_model, reparameterize
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import count_macs, measure_latency, paired_ratio

log = logging.getLogger("bench")

SECTIONS = ("convert", "latency", "train", "gpu")
# Latency contenders, in table order; every ratio is "<variant>_over_eager_plain".
VARIANTS = ("multibranch", "eager_plain", "eager_plain_cl", "compile_plain", "onnxruntime")
VARIANT_LABELS = {
    "multibranch": "multi-branch (eager)",
    "eager_plain": "plain, eager NCHW",
    "eager_plain_cl": "plain, eager channels_last",
    "compile_plain": "plain, torch.compile",
    "onnxruntime": "plain, ONNX Runtime",
}
BASELINE = "eager_plain"
TARGETS = (
    # (description, metric, limit): the metric must be <= limit.
    ("conversion of repvgg_b3, ours / timm", "convert/repvgg_b3/ratio_vs_timm", 0.5),
    (
        "plain repvgg_a0 at batch 1, ONNX Runtime / PyTorch eager",
        "latency/repvgg_a0/b1/onnxruntime_over_eager_plain",
        0.7,
    ),
    ("Lightning loop / bare loop, time per step", "train/lightning_overhead", 1.05),
)
MARK_BEGIN = "<!-- BEGIN GENERATED: scripts/bench.py --render; edit outside these markers -->"
MARK_END = "<!-- END GENERATED -->"


@dataclass(frozen=True)
class Settings:
    """Everything that sizes a run; a profile is one of these."""

    convert_models: tuple[str, ...] = ("repvgg_a0", "repvgg_b2g4", "repvgg_b3")
    convert_rounds: int = 7
    convert_warmup: int = 1
    latency_models: tuple[str, ...] = ("repvgg_a0", "repvgg_b2g4", "rmnet_resnet18")
    batches: tuple[int, ...] = (1, 8)
    size: int = 224
    latency_rounds: int = 15
    latency_warmup: int = 3
    compile_backend: str | None = "inductor"  # None: skip torch.compile
    # Inductor's CPU inference setting: weights become constants, so convolutions get their
    # weights pre-packed once (eager PyTorch re-lays them out on every call).
    compile_freezing: bool = True
    matmul_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    train_model: str = "repvgg_a0"
    train_size: int = 32
    train_batch: int = 64
    train_steps: int = 60
    train_warm_steps: int = 10
    train_reps: int = 5
    train_tiny_steps: int = 200
    gpu_models: tuple[str, ...] = ("repvgg_a0", "repvgg_b2g4")
    gpu_size: int = 224
    gpu_train_batch: int = 128
    gpu_infer_batch: int = 256
    gpu_steps: int = 20
    gpu_rounds: int = 5
    gpu_matmul_size: int = 8192


PROFILES = {
    "full": Settings(),
    "quick": Settings(
        convert_rounds=5,
        latency_rounds=7,
        latency_warmup=2,
        matmul_sizes=(256, 512, 1024),
        train_steps=30,
        train_warm_steps=5,
        train_reps=5,
        train_tiny_steps=100,
        gpu_steps=10,
        gpu_rounds=3,
    ),
    # Tiny sizes for the script's own test: checks the plumbing, measures nothing useful.
    "smoke": Settings(
        convert_models=("repvgg_a0",),
        convert_rounds=1,
        convert_warmup=0,
        latency_models=("repvgg_a0",),
        batches=(1,),
        size=32,
        latency_rounds=2,
        latency_warmup=1,
        compile_backend="eager",  # dynamo tracing without code generation: seconds, not minutes
        matmul_sizes=(64, 128),
        train_size=16,
        train_batch=32,
        train_steps=3,
        train_warm_steps=1,
        train_reps=1,
        train_tiny_steps=4,
        gpu_models=("repvgg_a0",),
        gpu_size=16,
        gpu_train_batch=4,
        gpu_infer_batch=4,
        gpu_steps=1,
        gpu_rounds=1,
        gpu_matmul_size=64,
    ),
}


# --------------------------------------------------------------------------- machine and load


def _proc_stat_busy_s() -> float | None:
    """Seconds of CPU time the whole machine has spent busy since boot (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq [steal guest guest_nice]; guest is inside user.
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cores() -> int:
    return os.cpu_count() or 1


class CpuWindow:
    """Wall time, load average and other processes' CPU use over a `with` block.

    `foreign_cores` is the busy CPU time of the machine minus this process's, per wall second
    (1.0 = one core's worth of someone else's work); `foreign_share` divides it by the cores.
    """

    def __enter__(self) -> CpuWindow:
        self.load_before = os.getloadavg()[0]
        self._busy0, self._own0 = _proc_stat_busy_s(), _own_cpu_s()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        busy1, own1 = _proc_stat_busy_s(), _own_cpu_s()
        self.load_after = os.getloadavg()[0]
        self.own_cores = (own1 - self._own0) / self.wall_s if self.wall_s > 0 else 0.0
        if busy1 is None or self._busy0 is None or self.wall_s <= 0:
            self.foreign_cores = None
        else:
            foreign = (busy1 - self._busy0) - (own1 - self._own0)
            # Clock-tick rounding can make a quiet window slightly negative.
            self.foreign_cores = max(0.0, foreign / self.wall_s)

    def record(self) -> dict[str, float | None]:
        """The window as JSON-ready numbers."""
        share = None if self.foreign_cores is None else self.foreign_cores / _cores()
        return {
            "wall_s": self.wall_s,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "own_cores": self.own_cores,
            "foreign_cores": self.foreign_cores,
            "foreign_share": share,
        }


def wait_until_quiet(max_wait_s: float, share: float = 0.1) -> float | None:
    """Sample 1-s windows until other processes use < `share` of the CPU or time runs out;
    returns the last foreign share seen (None when it cannot be measured)."""
    deadline = time.monotonic() + max_wait_s
    seen = None
    while time.monotonic() < deadline:
        with CpuWindow() as w:
            time.sleep(1.0)
        seen = None if w.foreign_cores is None else w.foreign_cores / _cores()
        if seen is None or seen < share:
            break
    return seen


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # a missing optional package is just "not installed"
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, memory, library versions and threads of this run."""
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    return {
        "cpu": _cpu_model(),
        "logical_cores": _cores(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": mem_gib,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "timm": _version("timm"),
        "pytorch_lightning": _version("pytorch_lightning"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "not available",
    }


# --------------------------------------------------------------------------- conversion


def _load_bench_convert() -> Any:
    """scripts/bench_convert.py as a module (scripts/ is not a package)."""
    if "bench_convert" in sys.modules:
        return sys.modules["bench_convert"]
    path = Path(__file__).with_name("bench_convert.py")
    spec = importlib.util.spec_from_file_location("bench_convert", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_convert"] = module
    spec.loader.exec_module(module)
    return module


def bench_convert_section(s: Settings, run: Run) -> None:
    """Conversion time of ours vs timm's for each model (interleaved, medians)."""
    bench_conversion = _load_bench_convert().bench_conversion
    for name in s.convert_models:
        log.info("convert: %s", name)
        with run.window(f"convert/{name}"):
            run.metrics.update(bench_conversion(name, s.convert_rounds, s.convert_warmup))


# --------------------------------------------------------------------------- latency


def compile_net(
    net: nn.Module, x: torch.Tensor, backend: str, freezing: bool = False
) -> tuple[Callable[[], Any] | None, float, str | None]:
    """torch.compile `net` for input `x`; (call, seconds the first call took, error or None)."""
    start = time.perf_counter()
    try:
        # torch.compile(options={"freezing": True}) does not reach the freezing pass (checked
        # with torch 2.14: the convolutions stay unpacked); the global config does.
        setting = contextlib.nullcontext()
        if backend == "inductor":
            from torch._inductor import config as inductor_config

            setting = inductor_config.patch(freezing=freezing)
        compiled = torch.compile(net, backend=backend, dynamic=False)
        with setting, torch.inference_mode():
            compiled(x)  # compiles for this shape; excluded from the latency rounds
    except Exception as err:  # a failing compiler is a result to record, not a crash
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, time.perf_counter() - start, f"{type(err).__name__}: {message}"[:500]
    return functools.partial(compiled, x), time.perf_counter() - start, None


@contextlib.contextmanager
def _fresh_compile_cache(directory: Path) -> Iterator[None]:
    """Point Inductor's on-disk cache at an empty folder: compile times are then those of a
    first compile, whatever earlier runs left in the machine's cache."""
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def _forms(name: str, size: int) -> tuple[nn.Module, nn.Module]:
    """The multi-branch net with trained-like, calibrated BN (keeps activations well scaled, so
    no denormal slowdowns) and its plain form."""
    torch.manual_seed(0)
    source = create_model(name).eval()
    randomize_bn(source, 0, inputs=torch.randn(2, 3, size, size))
    return source, reparameterize(source)


def bench_latency_model(name: str, s: Settings, run: Run, workdir: Path) -> None:
    """All runtimes of one model at every batch size, interleaved per batch size."""
    source, plain = _forms(name, s.size)
    plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    onnx_path = workdir / f"{name}.onnx"
    export_onnx(plain, onnx_path, torch.randn(1, 3, s.size, s.size))
    runner = OnnxRunner(onnx_path, threads=torch.get_num_threads())
    # Each form's own arithmetic: the multi-branch form does more MACs than the plain net for
    # RepVGG (its 1x1 branches), fewer for RMNet (the plain net carries the residuals).
    macs = {"plain": count_macs(plain, s.size), "multibranch": count_macs(source, s.size)}
    prefix = f"latency/{name}"
    for form, count in macs.items():
        run.metrics[f"{prefix}/{form}_gmacs"] = count / 1e9
    gen = torch.Generator().manual_seed(0)
    for batch in s.batches:
        key = f"{prefix}/b{batch}"
        x = torch.randn(batch, 3, s.size, s.size, generator=gen)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns: dict[str, Callable[[], Any]] = {
            "multibranch": functools.partial(source, x),
            "eager_plain": functools.partial(plain, x),
            "eager_plain_cl": functools.partial(plain_cl, x_cl),
            "onnxruntime": functools.partial(runner.run_numpy, x.numpy()),
        }
        if s.compile_backend is not None:
            log.info("latency: %s b%d: torch.compile (%s)", name, batch, s.compile_backend)
            with run.window(f"{key}/compile"):
                call, seconds, error = compile_net(plain, x, s.compile_backend, s.compile_freezing)
            run.metrics[f"{key}/compile_s"] = seconds
            if error is None:
                fns["compile_plain"] = call
            else:
                run.errors[f"{key}/compile_plain"] = error
                log.warning("torch.compile failed for %s b%d: %s", name, batch, error)
        fns = {v: fns[v] for v in VARIANTS if v in fns}
        with torch.inference_mode():
            # Every runtime must compute the same function, or the timings mean nothing.
            reference = source(x)
            gap = max(rel_max(reference, torch.as_tensor(fn())) for fn in fns.values())
        run.metrics[f"{key}/max_rel_diff"] = gap
        log.info("latency: %s b%d: timing %s", name, batch, ", ".join(fns))
        with run.window(key), torch.inference_mode():
            results = measure_latency(fns, rounds=s.latency_rounds, warmup=s.latency_warmup)
        run.details[key] = {v: r["times_ms"] for v, r in results.items()}
        for variant, r in results.items():
            run.metrics[f"{key}/{variant}_ms"] = r["median_ms"]
            run.metrics[f"{key}/{variant}_min_ms"] = r["min_ms"]
            work = macs["multibranch" if variant == "multibranch" else "plain"]
            run.metrics[f"{key}/{variant}_gflops"] = 2 * work * batch / r["median_ms"] / 1e6
            if variant != BASELINE:
                ratio = paired_ratio(results, variant, BASELINE)
                run.metrics[f"{key}/{variant}_over_{BASELINE}"] = ratio


def _onnx_matmul(b: torch.Tensor, threads: int) -> Callable[[Any], Any]:
    """An ONNX Runtime session computing x @ b (b stored in the graph), called on numpy x."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "b"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b.numpy(), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {"x": x})


def bench_matmul_peak(sizes: tuple[int, ...], rounds: int, run: Run) -> None:
    """fp32 n x n matrix multiplies with PyTorch's BLAS and with ONNX Runtime's, interleaved;
    the best median GFLOP/s over sizes and libraries is the machine's measured peak (small
    sizes stay in cache, large ones amortize; the libraries differ by CPU vendor)."""
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out, a_np = torch.empty(n, n), a.numpy()
        fns = {
            "torch": functools.partial(torch.mm, a, b, out=out),
            "onnxruntime": functools.partial(_onnx_matmul(b, torch.get_num_threads()), a_np),
        }
        with run.window(f"peak/matmul_fp32/n{n}"):
            r = measure_latency(fns, rounds=rounds, warmup=2)
        for lib, res in r.items():
            gflops = 2 * n**3 / res["median_ms"] / 1e6
            run.metrics[f"peak/matmul_fp32/{lib}_n{n}_gflops"] = gflops
            if gflops > best:
                best = gflops
                run.metrics["peak/matmul_n"] = n
                run.labels["peak/matmul_library"] = lib
    run.metrics["peak/matmul_fp32_gflops"] = best


def bench_latency_section(s: Settings, run: Run) -> None:
    """Latency of every model, then the matmul peak and the fastest runtime's share of it."""
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        (Path(tmp) / "inductor").mkdir()
        with _fresh_compile_cache(Path(tmp) / "inductor"):
            for name in s.latency_models:
                log.info("latency: %s", name)
                bench_latency_model(name, s, run, Path(tmp))
    bench_matmul_peak(s.matmul_sizes, s.latency_rounds, run)
    peak = run.metrics["peak/matmul_fp32_gflops"]
    for name in s.latency_models:
        for batch in s.batches:
            key = f"latency/{name}/b{batch}"
            best = min(
                (v for v in VARIANTS if f"{key}/{v}_ms" in run.metrics),
                key=lambda v, key=key: run.metrics[f"{key}/{v}_ms"],
            )
            run.labels[f"{key}/fastest"] = best
            run.metrics[f"{key}/fastest_gflops"] = run.metrics[f"{key}/{best}_gflops"]
            run.metrics[f"{key}/fastest_over_peak"] = run.metrics[f"{key}/{best}_gflops"] / peak


# --------------------------------------------------------------------------- training overhead


def _digits(s: Settings) -> Any:
    """The digits datamodule, its tensors built in memory once."""
    from repvgg_lab.data import DigitsDataModule

    dm = DigitsDataModule(img_size=s.train_size, batch_size=s.train_batch, augment=True)
    dm.setup("fit")
    return dm


def _module_factory(s: Settings, tiny: bool = False) -> Callable[[], Any]:
    """Identically seeded ClassifierModules of `train_model` (or of a one-layer net, whose step
    costs next to nothing, so the Lightning-minus-bare difference is the loop's own cost)."""
    from repvgg_lab.lit.module import ClassifierModule

    def module() -> Any:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * s.train_size**2, 10)) if tiny else None
        # No batch-size LR scaling and no scheduler: configure_optimizers needs no Trainer, so
        # the bare loop gets the very optimizer (SGD, param groups, lr, wd) Lightning gets.
        return ClassifierModule(
            s.train_model, input_size=s.train_size, lr_batch_reference=None, net=net
        )

    return module


def bare_loop(module: Any, loader: Any, steps: int, warm: int) -> tuple[float, float]:
    """Manual forward/backward/step; (seconds for steps warm+1..steps, seconds incl. setup)."""
    start_all = time.perf_counter()
    net = module.net.train()
    optimizer = module.configure_optimizers()
    done, start = 0, start_all
    while done < steps:
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warm:
                start = time.perf_counter()
            if done == steps:
                break
    end = time.perf_counter()
    return end - start, end - start_all


def lightning_loop(module: Any, dm: Any, steps: int, warm: int) -> tuple[float, float]:
    """Trainer.fit of the project's ClassifierModule; same span as `bare_loop`."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        start = end = 0.0

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            # global_step counts optimizer steps done, like `done` in bare_loop.
            if trainer.global_step == warm:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    clock = Clock()
    start_all = time.perf_counter()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    end_all = time.perf_counter()
    if trainer.global_step != steps:
        raise RuntimeError(f"Lightning ran {trainer.global_step} steps, expected {steps}")
    return clock.end - (clock.start if warm else start_all), end_all - start_all


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info lines and hints (GPU available, few workers...) are noise here."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def compare_loops(
    dm: Any, make_module: Callable[[], Any], steps: int, warm: int, reps: int
) -> dict[str, dict[str, list[float]]]:
    """Alternating repetitions of both loops: per loop, the seconds of the timed steps
    (`steady`) and of the whole run including setup (`total`)."""
    if not 0 <= warm < steps:
        raise ValueError(f"need 0 <= warm-up steps ({warm}) < steps ({steps})")
    loops = {
        "bare": lambda: bare_loop(make_module(), dm.train_dataloader(), steps, warm),
        "lightning": lambda: lightning_loop(make_module(), dm, steps, warm),
    }
    out: dict[str, dict[str, list[float]]] = {
        "steady": {"bare": [], "lightning": []},
        "total": {"bare": [], "lightning": []},
    }
    with _quiet_lightning():
        for rep in range(reps):
            for kind in ("bare", "lightning") if rep % 2 == 0 else ("lightning", "bare"):
                steady_s, total_s = loops[kind]()
                out["steady"][kind].append(steady_s)
                out["total"][kind].append(total_s)
    return out


def _paired(times: dict[str, list[float]], fn: Callable[[float, float], float]) -> float:
    """Median over repetitions of fn(lightning, bare)."""
    return statistics.median(
        fn(li, b) for li, b in zip(times["lightning"], times["bare"], strict=True)
    )


def bench_train_section(s: Settings, run: Run) -> None:
    """Lightning vs bare loop on the same model, data, optimizer and steps.

    The headline excludes one-time setup from both: it times the steps after `train_warm_steps`
    (data loading, forward, backward, optimizer step and, for Lightning, its hooks, logging and
    metrics). Setup (Trainer construction, fit start-up/tear-down) is reported separately. The
    same comparison on a one-layer net gives Lightning's fixed cost per step in milliseconds,
    which predicts the overhead ratio of any model: 1 + fixed / bare step.
    """
    dm = _digits(s)
    m = run.metrics
    timed = s.train_steps - s.train_warm_steps
    with run.window("train"):
        r = compare_loops(dm, _module_factory(s), s.train_steps, s.train_warm_steps, s.train_reps)
    m["train/bare_step_ms"] = statistics.median(r["steady"]["bare"]) / timed * 1e3
    m["train/lightning_step_ms"] = statistics.median(r["steady"]["lightning"]) / timed * 1e3
    m["train/lightning_overhead"] = _paired(r["steady"], lambda li, b: li / b)
    m["train/lightning_overhead_with_setup"] = _paired(r["total"], lambda li, b: li / b)
    m["train/bare_total_s"] = statistics.median(r["total"]["bare"])
    m["train/lightning_total_s"] = statistics.median(r["total"]["lightning"])
    run.details["train"] = r

    tiny_timed = s.train_tiny_steps - s.train_warm_steps
    with run.window("train/tiny"):
        r = compare_loops(
            dm, _module_factory(s, tiny=True), s.train_tiny_steps, s.train_warm_steps, s.train_reps
        )
    m["train/tiny/bare_step_ms"] = statistics.median(r["steady"]["bare"]) / tiny_timed * 1e3
    m["train/tiny/lightning_step_ms"] = (
        statistics.median(r["steady"]["lightning"]) / tiny_timed * 1e3
    )
    fixed_ms = _paired(r["steady"], lambda li, b: (li - b) / tiny_timed * 1e3)
    m["train/lightning_fixed_ms_per_step"] = fixed_ms
    m["train/lightning_overhead_predicted"] = 1 + fixed_ms / m["train/bare_step_ms"]
    run.details["train/tiny"] = r


# --------------------------------------------------------------------------- GPU


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, rounds: int) -> float:
    """Median TFLOP/s of an n x n matmul in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def mm() -> None:
        torch.mm(a, b)
        _sync(device)

    r = measure_latency({"mm": mm}, rounds=rounds, warmup=2)
    return 2 * n**3 / r["mm"]["median_ms"] / 1e9


def _train_step_fn(
    name: str, s: Settings, device: torch.device, bf16_cl: bool
) -> Callable[[], None]:
    """A function running `gpu_steps` SGD steps on synthetic images, synchronized at the end."""
    torch.manual_seed(0)
    net = create_model(name).to(device).train()
    x = torch.randn(s.gpu_train_batch, 3, s.gpu_size, s.gpu_size, device=device)
    y = torch.randint(0, 1000, (s.gpu_train_batch,), device=device)
    if bf16_cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    autocast = functools.partial(
        torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=bf16_cl
    )

    def steps() -> None:
        for _ in range(s.gpu_steps):
            with autocast():
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)

    return steps


def _infer_fn(plain: nn.Module, s: Settings, device: torch.device, dtype: torch.dtype) -> Any:
    net = copy.deepcopy(plain).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(s.gpu_infer_batch, 3, s.gpu_size, s.gpu_size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)

    def infer() -> None:
        with torch.inference_mode():
            net(x)
        _sync(device)

    return infer


@contextlib.contextmanager
def _gpu_flags() -> Iterator[None]:
    """TF32 off (fp32 numbers must be fp32, not silently lower precision) and cuDNN autotuning
    on (fixed shapes, as a user would set it for throughput)."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")
    saved = [getattr(obj, name) for obj, name in flags]
    saved_benchmark = torch.backends.cudnn.benchmark
    for obj, name in flags:
        setattr(obj, name, False)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        for (obj, name), value in zip(flags, saved, strict=True):
            setattr(obj, name, value)
        torch.backends.cudnn.benchmark = saved_benchmark


def bench_gpu_section(s: Settings, run: Run, device: torch.device | str = "cuda") -> None:
    """Training images/s (fp32; bf16 autocast + channels_last) and plain-net inference images/s
    in fp16/bf16 with the share of the measured matmul peak. Written for CUDA; `device="cpu"`
    only exercises the code path."""
    device = torch.device(device)
    m = run.metrics
    with _gpu_flags(), run.window("gpu"):
        peaks = {
            name: matmul_peak_tflops(device, dtype, s.gpu_matmul_size, s.gpu_rounds)
            for name, dtype in (
                ("fp32", torch.float32),
                ("bf16", torch.bfloat16),
                ("fp16", torch.float16),
            )
        }
        for name, tflops in peaks.items():
            m[f"gpu/peak/matmul_{name}_tflops"] = tflops
        for model in s.gpu_models:
            fns = {
                "fp32": _train_step_fn(model, s, device, bf16_cl=False),
                "bf16_cl": _train_step_fn(model, s, device, bf16_cl=True),
            }
            r = measure_latency(fns, rounds=s.gpu_rounds, warmup=1)
            for mode, res in r.items():
                images = s.gpu_train_batch * s.gpu_steps
                m[f"gpu/train/{model}/{mode}_images_per_s"] = images / res["median_ms"] * 1e3
            del fns
            source, plain = _forms(model, s.gpu_size)
            macs = count_macs(plain, s.gpu_size)
            fns = {
                "fp16": _infer_fn(plain, s, device, torch.float16),
                "bf16": _infer_fn(plain, s, device, torch.bfloat16),
            }
            r = measure_latency(fns, rounds=s.gpu_rounds, warmup=2)
            for mode, res in r.items():
                rate = s.gpu_infer_batch / res["median_ms"] * 1e3
                m[f"gpu/infer/{model}/plain_{mode}_images_per_s"] = rate
                tflops = 2 * macs * rate / 1e12
                m[f"gpu/infer/{model}/plain_{mode}_tflops"] = tflops
                m[f"gpu/infer/{model}/plain_{mode}_over_peak"] = tflops / peaks[mode]
            del fns, source, plain
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What a run collects: numeric metrics, text labels, load windows, errors, raw rounds."""

    wait_quiet_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    windows: dict[str, dict[str, float | None]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        """Record load and foreign CPU share over the block (after waiting for quiet if asked)."""
        if self.wait_quiet_s > 0:
            wait_until_quiet(self.wait_quiet_s)
        with CpuWindow() as w:
            yield
        self.windows[name] = w.record()


def targets(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it holds (None when not measured)."""
    out = []
    for description, key, limit in TARGETS:
        value = metrics.get(key)
        holds = None if value is None or not math.isfinite(value) else bool(value <= limit)
        out.append(
            {"target": description, "key": key, "value": value, "limit": limit, "holds": holds}
        )
    return out


def run_benchmarks(
    s: Settings, sections: tuple[str, ...], threads: int, wait_quiet_s: float = 0.0
) -> dict[str, Any]:
    """Run the chosen sections; returns the JSON-ready report."""
    torch.set_num_threads(threads)
    run = Run(wait_quiet_s=wait_quiet_s)
    started = dt.datetime.now(dt.UTC)
    with run.window("run"):
        if "convert" in sections:
            bench_convert_section(s, run)
        if "latency" in sections:
            bench_latency_section(s, run)
        if "train" in sections:
            bench_train_section(s, run)
        if "gpu" in sections and torch.cuda.is_available():
            bench_gpu_section(s, run)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "not available"
    return {
        "created": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "sections": list(sections),
        "settings": asdict(s),
        "machine": machine_info(threads),
        "gpu": gpu if "gpu" in sections else "not run",
        "metrics": run.metrics,
        "labels": run.labels,
        "targets": targets(run.metrics),
        "windows": run.windows,
        "errors": run.errors,
        "details": run.details,
    }


# --------------------------------------------------------------------------- rendering


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def _window_note(report: dict[str, Any], key: str) -> str:
    w = report["windows"].get(key)
    if not w:
        return "—"
    return f"{_pct(w['foreign_share'])} (load {w['load_before']:.1f}→{w['load_after']:.1f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _md_conditions(report: dict[str, Any]) -> list[str]:
    mc, run = report["machine"], report["windows"].get("run", {})
    s = report["settings"]
    return [
        f"Measured {report['created']} with `{report['command']}`.",
        "",
        *_table(
            ["machine", "value"],
            [
                ["CPU", f"{mc['cpu']} ({mc['cpu_capability']})"],
                ["cores / torch threads", f"{mc['logical_cores']} / {mc['threads']}"],
                ["memory", f"{_f(mc['memory_gib'])} GiB"],
                ["GPU", str(report["gpu"])],
                [
                    "versions",
                    f"python {mc['python']}, torch {mc['torch']}, onnxruntime "
                    f"{mc['onnxruntime']}, timm {mc['timm']}, lightning {mc['pytorch_lightning']}",
                ],
                [
                    "load average (1 min) before → after",
                    f"{_f(run.get('load_before'), 2)} → {_f(run.get('load_after'), 2)}",
                ],
                [
                    "other processes' CPU share during the run",
                    f"{_pct(run.get('foreign_share'))} of {mc['logical_cores']} cores",
                ],
                ["run time", f"{_f(run.get('wall_s'), 3)} s"],
                [
                    "input, rounds",
                    f"{s['size']}×{s['size']} fp32; latency median of {s['latency_rounds']} "
                    f"rounds after {s['latency_warmup']} warm-up; conversion median of "
                    f"{s['convert_rounds']}",
                ],
            ],
        ),
    ]


def _target_notes(report: dict[str, Any]) -> list[str]:
    """The figures that explain each target's verdict (all read from the JSON)."""
    m, notes = report["metrics"], []
    p = "convert/repvgg_b3"
    if f"{p}/ours_s" in m:
        notes.append(
            f"Conversion of repvgg_b3: ours {_f(m[f'{p}/ours_s'])} s, timm "
            f"{_f(m[f'{p}/timm_s'])} s wall; CPU time {_f(m[f'{p}/ours_cpu_s'])} s vs "
            f"{_f(m[f'{p}/timm_cpu_s'])} s (ratio "
            f"{m[f'{p}/ours_cpu_s'] / m[f'{p}/timm_cpu_s']:.2f}); foreign CPU "
            f"{_window_note(report, p)}."
        )
    key, peak = "latency/repvgg_a0/b1", m.get("peak/matmul_fp32_gflops")
    if f"{key}/onnxruntime_ms" in m and peak:
        eager, ort = m[f"{key}/{BASELINE}_gflops"], m[f"{key}/onnxruntime_gflops"]
        line = (
            f"repvgg_a0 at batch 1: eager PyTorch reaches {_f(eager)} GFLOP/s "
            f"({_pct(eager / peak)} of the matmul peak), ONNX Runtime {_f(ort)} "
            f"({_pct(ort / peak)}); 0.7× eager's time needs {_f(eager / 0.7)} GFLOP/s, "
            f"{_pct(eager / 0.7 / peak)} of the peak, for the whole net."
        )
        if f"{key}/compile_plain_over_{BASELINE}" in m:
            line += (
                " torch.compile, which also pre-packs the weights, runs at "
                f"{m[f'{key}/compile_plain_over_{BASELINE}']:.2f}× eager."
            )
        notes.append(line)
    if "train/lightning_fixed_ms_per_step" in m:
        steady = report["details"]["train"]["steady"]
        per_rep = ", ".join(
            f"{li / b:.3f}" for li, b in zip(steady["lightning"], steady["bare"], strict=True)
        )
        notes.append(
            f"Lightning costs {_f(m['train/lightning_fixed_ms_per_step'])} ms per step more than "
            f"the bare loop on a one-layer net; with the bare step of "
            f"{_f(m['train/bare_step_ms'])} ms that predicts "
            f"{m['train/lightning_overhead_predicted']:.3f}×; measured "
            f"{m['train/lightning_overhead']:.3f}× (repetitions: {per_rep})."
        )
    return [f"- {n}" for n in notes] + ([""] if notes else [])


def _md_targets(report: dict[str, Any]) -> list[str]:
    rows = []
    for t in targets(report["metrics"]):
        verdict = {True: "**holds**", False: "**missed**", None: "not measured"}[t["holds"]]
        rows.append([t["target"], f"`{t['key']}`", _f(t["value"]), f"≤ {t['limit']}", verdict])
    return _table(["target", "metric", "measured", "limit", "verdict"], rows) + _target_notes(
        report
    )


def _md_convert(report: dict[str, Any]) -> list[str]:
    m, rows = report["metrics"], []
    for name in report["settings"]["convert_models"]:
        p = f"convert/{name}"
        if f"{p}/ours_s" not in m:
            continue
        rows.append(
            [
                name,
                _f(m[f"{p}/ours_s"]),
                _f(m[f"{p}/timm_s"]),
                f"**{m[f'{p}/ratio_vs_timm']:.2f}×**",
                f"{_f(m[f'{p}/ours_cpu_s'])} / {_f(m[f'{p}/timm_cpu_s'])}",
                f"{m[f'{p}/kernel_rel_diff']:.1e}",
                _window_note(report, p),
            ]
        )
    if not rows:
        return []
    return [
        "### Conversion time (fp32 CPU, copy of the net, seconds)",
        "",
        *_table(
            [
                "model",
                "ours",
                "timm",
                "ours / timm (paired median)",
                "CPU s ours / timm",
                "kernel gap",
                "foreign CPU (load)",
            ],
            rows,
        ),
    ]


def _latency_keys(report: dict[str, Any]) -> list[tuple[str, int, str]]:
    s, m = report["settings"], report["metrics"]
    return [
        (name, b, f"latency/{name}/b{b}")
        for name in s["latency_models"]
        for b in s["batches"]
        if f"latency/{name}/b{b}/{BASELINE}_ms" in m
    ]


def _md_latency(report: dict[str, Any], png_name: str | None) -> list[str]:
    m, keys = report["metrics"], _latency_keys(report)
    if not keys:
        return []
    rows = []
    for name, b, key in keys:
        cells = []
        for v in VARIANTS:
            if f"{key}/{v}_ms" not in m:
                cells.append("—")
                continue
            ratio = "1" if v == BASELINE else f"{m[f'{key}/{v}_over_{BASELINE}']:.2f}"
            cells.append(f"{m[f'{key}/{v}_ms']:.1f} ({ratio})")
        rows.append([name, str(b), *cells, _window_note(report, key)])
    lines = [
        "### CPU inference latency (ms, median; in brackets: time ÷ plain eager NCHW)",
        "",
        *_table(["model", "batch", *(VARIANT_LABELS[v] for v in VARIANTS), "foreign CPU"], rows),
    ]
    if png_name:
        lines += [f"![latency relative to the plain net in eager PyTorch]({png_name})", ""]
    compile_rows = [
        [
            name,
            str(b),
            _f(m.get(f"{key}/compile_s")),
            report["errors"].get(f"{key}/compile_plain", ""),
        ]
        for name, b, key in keys
        if f"{key}/compile_s" in m
    ]
    if compile_rows:
        freezing = report["settings"].get("compile_freezing")
        lines += [
            f"torch.compile (backend `{report['settings']['compile_backend']}`, freezing "
            f"{'on' if freezing else 'off'}; the on-disk cache starts empty, so the first compile "
            "pays for the shared kernels) compile time, excluded from latency:",
            "",
            *_table(["model", "batch", "compile s", "error"], compile_rows),
        ]
    peak = m.get("peak/matmul_fp32_gflops")
    n = int(m.get("peak/matmul_n", 0))
    sizes = ", ".join(str(k) for k in report["settings"]["matmul_sizes"])
    rows = [
        [
            name,
            str(b),
            VARIANT_LABELS[report["labels"][f"{key}/fastest"]],
            _f(m[f"{key}/fastest_gflops"]),
            _pct(m[f"{key}/fastest_over_peak"]),
        ]
        for name, b, key in keys
        if f"{key}/fastest" in report["labels"]
    ]
    if rows:
        lines += [
            f"Effective speed of the fastest runtime (2 × the MACs of the form it runs per image ÷ "
            f"median time) beside the measured fp32 matrix-multiply peak: **{_f(peak)} GFLOP/s** "
            f"(best median over n = {sizes} of torch.mm and ONNX Runtime's MatMul, reached by "
            f"{report['labels'].get('peak/matmul_library')} at n = {n}; foreign CPU "
            f"{_window_note(report, f'peak/matmul_fp32/n{n}')}).",
            "",
            *_table(["model", "batch", "fastest", "GFLOP/s", "of matmul peak"], rows),
        ]
    return lines


def _md_train(report: dict[str, Any]) -> list[str]:
    m, s = report["metrics"], report["settings"]
    if "train/lightning_overhead" not in m:
        return []
    return [
        "### Training loop overhead (CPU)",
        "",
        f"{s['train_model']} on digits at {s['train_size']}×{s['train_size']}, batch "
        f"{s['train_batch']}, SGD from `ClassifierModule.configure_optimizers`, "
        f"{s['train_steps']} steps, the first {s['train_warm_steps']} untimed; "
        f"{s['train_reps']} alternating repetitions, medians.",
        "",
        *_table(
            ["loop", "ms / step", "whole run incl. setup, s"],
            [
                ["bare PyTorch", _f(m["train/bare_step_ms"]), _f(m["train/bare_total_s"])],
                [
                    "Lightning (`ClassifierModule`)",
                    _f(m["train/lightning_step_ms"]),
                    _f(m["train/lightning_total_s"]),
                ],
                [
                    "Lightning / bare (paired median)",
                    f"**{m['train/lightning_overhead']:.3f}×**",
                    f"{m['train/lightning_overhead_with_setup']:.3f}×",
                ],
            ],
        ),
        f"Foreign CPU during the repetitions: {_window_note(report, 'train')}. The same loops "
        f"on a one-layer net ({s['train_tiny_steps']} steps): bare "
        f"{_f(m['train/tiny/bare_step_ms'])} ms, Lightning "
        f"{_f(m['train/tiny/lightning_step_ms'])} ms per step, i.e. Lightning's own cost is "
        f"{_f(m['train/lightning_fixed_ms_per_step'])} ms per step (foreign CPU "
        f"{_window_note(report, 'train/tiny')}).",
        "",
    ]


def _md_gpu(report: dict[str, Any]) -> list[str]:
    m = report["metrics"]
    gpu = {k: v for k, v in m.items() if k.startswith("gpu/")}
    lines = ["### GPU", ""]
    if not gpu:
        return lines + [f"GPU: {report['gpu']} on the measuring machine; section skipped.", ""]
    rows = [[k.removeprefix("gpu/"), _f(v, 4)] for k, v in sorted(gpu.items())]
    return lines + [f"Device: {report['gpu']}.", "", *_table(["metric", "value"], rows)]


def render_markdown(report: dict[str, Any], png_name: str | None) -> str:
    """The generated part of docs/benchmarks.md."""
    lines = [MARK_BEGIN, "", "## Latest results", ""]
    lines += _md_conditions(report)
    lines += ["### Targets", "", *_md_targets(report)]
    lines += _md_convert(report) + _md_latency(report, png_name)
    lines += _md_train(report) + _md_gpu(report)
    if report["errors"]:
        lines += ["### Errors recorded", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(report["errors"].items())] + [""]
    return "\n".join([*lines, MARK_END])


def render_plot(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: each runtime's latency relative to the plain eager net, per model/batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, keys = report["metrics"], _latency_keys(report)
    batches = sorted({b for _, b, _ in keys})
    fig, axes = plt.subplots(
        1, max(1, len(batches)), figsize=(5.5 * max(1, len(batches)), 4), squeeze=False
    )
    width = 0.8 / len(VARIANTS)
    for ax, batch in zip(axes[0], batches, strict=False):
        models = [name for name, b, _ in keys if b == batch]
        for i, v in enumerate(VARIANTS):
            ratios = [
                1.0 if v == BASELINE else m.get(f"latency/{n}/b{batch}/{v}_over_{BASELINE}", 0.0)
                for n in models
            ]
            xs = [j + (i - (len(VARIANTS) - 1) / 2) * width for j in range(len(models))]
            ax.bar(xs, ratios, width, label=VARIANT_LABELS[v])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("time ÷ plain eager NCHW (lower is faster)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(VARIANTS), fontsize=8, frameon=False)
    mc = report["machine"]
    threads = f"{mc['threads']} thread{'s' if mc['threads'] != 1 else ''}"
    fig.suptitle(
        f"CPU latency, {mc['cpu']}, {threads}, torch {mc['torch']} "
        f"(foreign CPU {_pct(report['windows'].get('run', {}).get('foreign_share'))})",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


DOC_SKELETON = """# Benchmarks

`python scripts/bench.py --quick --out docs/benchmarks.json` measures; `python scripts/bench.py
--render docs/benchmarks.json` rewrites the part of this file between the markers (and
docs/benchmarks.png) from that JSON alone.

{generated}
"""


def render(json_path: Path, md_path: Path | None = None, png_path: Path | None = None) -> Path:
    """Rewrite the generated block of the markdown (creating the file if needed) and the plot."""
    report = json.loads(json_path.read_text())
    md_path = md_path or json_path.with_suffix(".md")
    png_path = png_path or json_path.with_suffix(".png")
    has_latency = bool(_latency_keys(report))
    if has_latency:
        render_plot(report, png_path)
    png_name = os.path.relpath(png_path, md_path.parent) if has_latency else None
    block = render_markdown(report, png_name)
    text = md_path.read_text() if md_path.exists() else None
    if text is None:
        md_path.write_text(DOC_SKELETON.format(generated=block))
    elif MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        md_path.write_text(head + block + rest.split(MARK_END, 1)[1])
    else:  # a hand-written file without the markers: keep it, add the block at the end
        md_path.write_text(text.rstrip("\n") + "\n\n" + block + "\n")
    return md_path


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="fewer rounds (<= 10 min, 2 cores)")
    profile.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    parser.add_argument(
        "--render",
        nargs="?",
        const=True,
        default=None,
        metavar="JSON",
        help="write the markdown and plot from JSON (alone: render only; bare with --out: "
        "render the new results)",
    )
    parser.add_argument("--md", type=Path, help="markdown to write (default: JSON's .md)")
    parser.add_argument("--png", type=Path, help="plot to write (default: JSON's .png)")
    parser.add_argument(
        "--threads", type=int, default=_cores(), help="torch / ONNX Runtime intra-op threads"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default: the profile's); 'none' skips torch.compile",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement wait up to S s for other processes to use < 10%% CPU",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if isinstance(args.render, str) and args.out is None:
        path = render(Path(args.render), args.md, args.png)
        log.info("wrote %s", path)
        return
    if args.out is None:
        parser.error("--out FILE.json is required to run the benchmarks")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    settings = PROFILES["quick" if args.quick else "smoke" if args.smoke else "full"]
    if args.compile_backend is not None:
        backend = None if args.compile_backend == "none" else args.compile_backend
        settings = replace(settings, compile_backend=backend)
    report = run_benchmarks(settings, tuple(args.sections), args.threads, args.wait_quiet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log.info("wrote %s", args.out)
    for t in report["targets"]:
        log.info(
            "target %s: %s (limit %s) -> %s",
            t["key"],
            _f(t["value"]),
            t["limit"],
            {True: "holds", False: "MISSED", None: "not measured"}[t["holds"]],
        )
    if args.render is not None:
        json_path = args.out if args.render is True else Path(args.render)
        log.info("wrote %s", render(json_path, args.md, args.png))


if __name__ == "__main__":
    main()
