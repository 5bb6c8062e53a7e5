"""CPU inference latency: the multi-branch net and its plain form in eager PyTorch (NCHW and
channels_last), under torch.compile and in ONNX Runtime, timed side by side; plus the machine's
measured fp32 matrix-multiply peak to judge the effective GFLOP/s against."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import Settings
from repvgg_lab.models import reparameterize
from repvgg_lab.reparam import rel_max
from repvgg_lab.runtime import OnnxRunner
from repvgg_lab.runtime.export import export_onnx
from repvgg_lab.testing import trained_like
from repvgg_lab.utils import count_macs, measure_latency, paired_ratio

log = logging.getLogger(__name__)


def compile_net(
    net: nn.Module, x: torch.Tensor, backend: str, freezing: bool = False
) -> tuple[Callable[[], Any] | None, float, str | None]:
    """torch.compile `net` for input `x`; (call, seconds the first call took, error or None)."""
    start = time.perf_counter()
    try:
        # torch.compile(options={"freezing": True}) does not reach the freezing pass (checked
        # with torch 2.14: the convolutions stay unpacked); the global config does.
        setting: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
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
def fresh_compile_cache(directory: Path) -> Iterator[None]:
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


def net_forms(name: str, size: int) -> tuple[nn.Module, nn.Module]:
    """The multi-branch net with trained-like BN calibrated on random images (keeps activations
    well scaled, so no denormal slowdowns) and its plain form."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    source = trained_like(name, seed=0, inputs=images)
    return source, reparameterize(source)


def _compiled(
    name: str, batch: int, plain: nn.Module, x: torch.Tensor, s: Settings, run: Run
) -> Callable[[], Any] | None:
    """The compiled plain net's call, its compile time recorded (None when compiling failed)."""
    log.info("latency: %s b%d: torch.compile (%s)", name, batch, s.compile_backend)
    assert s.compile_backend is not None
    with run.window(k.compile_window(name, batch)):
        call, seconds, error = compile_net(plain, x, s.compile_backend, s.compile_freezing)
    run.metrics[k.batch_key(name, batch, "compile_s")] = seconds
    if error is not None:
        run.errors[k.compile_error_key(name, batch)] = error
        log.warning("torch.compile failed for %s b%d: %s", name, batch, error)
    return call


def _record_latency(
    name: str, batch: int, results: dict[str, dict[str, Any]], gmacs: dict[str, float], run: Run
) -> None:
    """Medians, minima, effective GFLOP/s and paired ratios of every runtime at one batch."""
    run.details[k.latency_window(name, batch)] = {v: r["times_ms"] for v, r in results.items()}
    for variant, r in results.items():
        run.metrics[k.latency_key(name, batch, variant)] = r["median_ms"]
        run.metrics[k.latency_key(name, batch, variant, "min_ms")] = r["min_ms"]
        work = gmacs["multibranch" if variant == "multibranch" else "plain"]
        gflops = 2 * work * batch / r["median_ms"] * 1e3
        run.metrics[k.latency_key(name, batch, variant, "gflops")] = gflops
        if variant != k.BASELINE:
            run.metrics[k.ratio_key(name, batch, variant)] = paired_ratio(
                results, variant, k.BASELINE
            )


def _bench_batch(
    name: str, batch: int, nets: dict[str, Any], x: torch.Tensor, s: Settings, run: Run
) -> None:
    """Every runtime of one model at one batch size, checked against the source, interleaved."""
    fns: dict[str, Callable[[], Any]] = {
        "multibranch": functools.partial(nets["multibranch"], x),
        "eager_plain": functools.partial(nets["plain"], x),
        "eager_plain_cl": functools.partial(
            nets["plain_cl"], x.contiguous(memory_format=torch.channels_last)
        ),
        "onnxruntime": functools.partial(nets["onnx"].run_numpy, x.numpy()),
    }
    if s.compile_backend is not None:
        call = _compiled(name, batch, nets["plain"], x, s, run)
        if call is not None:
            fns["compile_plain"] = call
    fns = {v: fns[v] for v in k.VARIANTS if v in fns}
    with torch.inference_mode():
        # Every runtime must compute the same function, or the timings mean nothing.
        reference = nets["multibranch"](x)
        gap = max(rel_max(reference, torch.as_tensor(fn())) for fn in fns.values())
    run.metrics[k.batch_key(name, batch, "max_rel_diff")] = gap
    if nets.get("onnx_int8") is not None:
        fns[k.INT8] = functools.partial(nets["onnx_int8"].run_numpy, x.numpy())
    log.info("latency: %s b%d: timing %s", name, batch, ", ".join(fns))
    with run.window(k.latency_window(name, batch)), torch.inference_mode():
        results = measure_latency(fns, rounds=s.latency_rounds, warmup=s.latency_warmup)
    _record_latency(name, batch, results, nets["gmacs"], run)
    if k.INT8 in results:
        run.metrics[k.int8_ratio_key(name, batch)] = paired_ratio(results, k.INT8, "onnxruntime")


def bench_latency_model(name: str, s: Settings, run: Run, workdir: Path) -> None:
    """All runtimes of one model at every batch size, interleaved per batch size."""
    source, plain = net_forms(name, s.size)
    onnx_path = workdir / f"{name}.onnx"
    export_onnx(plain, onnx_path, torch.randn(1, 3, s.size, s.size))
    # Each form's own arithmetic: the multi-branch form does more MACs than the plain net for
    # RepVGG (its 1x1 branches), fewer for RMNet (the plain net carries the residuals).
    gmacs = {
        form: count_macs(net, s.size) / 1e9
        for form, net in (("plain", plain), ("multibranch", source))
    }
    for form, count in gmacs.items():
        run.metrics[k.gmacs_key(name, form)] = count
    nets = {
        "multibranch": source,
        "plain": plain,
        "plain_cl": copy.deepcopy(plain).to(memory_format=torch.channels_last),
        "onnx": OnnxRunner(onnx_path, threads=torch.get_num_threads()),
        "onnx_int8": _int8_runner(onnx_path, s) if name in s.int8_models else None,
        "gmacs": gmacs,
    }
    gen = torch.Generator().manual_seed(0)
    for batch in s.batches:
        x = torch.randn(batch, 3, s.size, s.size, generator=gen)
        _bench_batch(name, batch, nets, x, s, run)


def _int8_runner(onnx_path: Path, s: Settings) -> OnnxRunner:
    """The exported plain net quantized to int8 (QDQ, per-channel weights) in ONNX Runtime;
    random calibration images: speed does not depend on the ranges."""
    from repvgg_lab.quant import QuantOptions
    from repvgg_lab.quant.ptq import quantize_onnx

    int8_path = onnx_path.with_suffix(".int8.onnx")
    images = torch.randn(8, 3, s.size, s.size, generator=torch.Generator().manual_seed(1))
    quantize_onnx(onnx_path, int8_path, images, QuantOptions(calibration_batches=2))
    return OnnxRunner(int8_path, threads=torch.get_num_threads())


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
        with run.window(k.matmul_window(n)):
            r = measure_latency(fns, rounds=rounds, warmup=2)
        for lib, res in r.items():
            gflops = 2 * n**3 / res["median_ms"] / 1e6
            run.metrics[k.matmul_key(lib, n)] = gflops
            if gflops > best:
                best = gflops
                run.metrics[k.PEAK_N] = n
                run.labels[k.PEAK_LIBRARY] = lib
    run.metrics[k.PEAK_GFLOPS] = best


def _record_fastest(s: Settings, run: Run) -> None:
    """Per model and batch: the fastest runtime and its share of the matmul peak."""
    m, peak = run.metrics, run.metrics[k.PEAK_GFLOPS]
    for name in s.latency_models:
        for batch in s.batches:
            timed = [v for v in k.VARIANTS if k.latency_key(name, batch, v) in m]
            best = min(timed, key=lambda v, b=batch, n=name: m[k.latency_key(n, b, v)])
            gflops = m[k.latency_key(name, batch, best, "gflops")]
            run.labels[k.batch_key(name, batch, "fastest")] = best
            m[k.batch_key(name, batch, "fastest_gflops")] = gflops
            m[k.batch_key(name, batch, "fastest_over_peak")] = gflops / peak


def bench_latency_section(s: Settings, run: Run) -> None:
    """Latency of every model, then the matmul peak and the fastest runtime's share of it."""
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        (Path(tmp) / "inductor").mkdir()
        with fresh_compile_cache(Path(tmp) / "inductor"):
            for name in s.latency_models:
                log.info("latency: %s", name)
                bench_latency_model(name, s, run, Path(tmp))
    bench_matmul_peak(s.matmul_sizes, s.latency_rounds, run)
    _record_fastest(s, run)
