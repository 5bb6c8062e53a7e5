"""Metric, window and label names of the benchmark results, defined once.

The sections write their numbers under these names and the renderer reads them back through the
same functions, so a name cannot drift between the writer and the docs."""

from __future__ import annotations

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
# The plain net quantized to int8 in ONNX Runtime: timed in the same rounds, compared with
# fp32 ONNX Runtime (not a contender of the fp32 table: it computes something else).
INT8 = "onnxruntime_int8"
CONVERTERS = ("ours", "timm")
MATMUL_LIBRARIES = ("torch", "onnxruntime")

RUN = "run"  # the window over the whole run
PEAK_GFLOPS = "peak/matmul_fp32_gflops"
PEAK_N = "peak/matmul_n"
PEAK_LIBRARY = "peak/matmul_library"  # a label
GPU_PREFIX = "gpu/"
GPU_WINDOW = "gpu"


def convert_window(model: str) -> str:
    """Window (and prefix) of one model's conversion benchmark."""
    return f"convert/{model}"


def convert_key(model: str, stat: str) -> str:
    """A conversion metric: ours_s, timm_s, ratio_vs_timm, ours_cpu_s, kernel_rel_diff, ..."""
    return f"{convert_window(model)}/{stat}"


def gmacs_key(model: str, form: str) -> str:
    """Giga multiply-accumulates per image of `form` ("plain" or "multibranch")."""
    return f"latency/{model}/{form}_gmacs"


def latency_window(model: str, batch: int) -> str:
    """Window, details entry and prefix of one model at one batch size."""
    return f"latency/{model}/b{batch}"


def batch_key(model: str, batch: int, name: str) -> str:
    """A per-batch entry: compile_s, max_rel_diff, fastest, fastest_gflops, fastest_over_peak."""
    return f"{latency_window(model, batch)}/{name}"


def compile_window(model: str, batch: int) -> str:
    """Window over torch.compile's first call."""
    return batch_key(model, batch, "compile")


def compile_error_key(model: str, batch: int) -> str:
    """Where a failed torch.compile is recorded among the errors."""
    return batch_key(model, batch, "compile_plain")


def latency_key(model: str, batch: int, runtime: str, unit: str = "ms") -> str:
    """A runtime's latency metric: unit "ms" (median), "min_ms" or "gflops"."""
    return batch_key(model, batch, f"{runtime}_{unit}")


def ratio_key(model: str, batch: int, runtime: str) -> str:
    """Paired median ratio of a runtime's time to the baseline's."""
    return batch_key(model, batch, f"{runtime}_over_{BASELINE}")


def int8_ratio_key(model: str, batch: int) -> str:
    """Paired median ratio of int8 ONNX Runtime's time to fp32 ONNX Runtime's."""
    return batch_key(model, batch, f"{INT8}_over_onnxruntime")


def matmul_key(library: str, n: int) -> str:
    """GFLOP/s of one library's n x n fp32 matmul."""
    return f"peak/matmul_fp32/{library}_n{n}_gflops"


def matmul_window(n: int) -> str:
    """Window over the n x n matmul measurement."""
    return f"peak/matmul_fp32/n{n}"


def train_window(tiny: bool = False) -> str:
    """Window and details entry of the loop comparison (`tiny`: on the one-layer net)."""
    return "train/tiny" if tiny else "train"


def train_key(name: str, tiny: bool = False) -> str:
    """A training-overhead metric: bare_step_ms, lightning_overhead, ..."""
    return f"{train_window(tiny)}/{name}"


def gpu_peak_key(dtype: str) -> str:
    """The GPU's matmul TFLOP/s in `dtype`."""
    return f"{GPU_PREFIX}peak/matmul_{dtype}_tflops"


def gpu_train_key(model: str, mode: str) -> str:
    """Training images/s in `mode` ("fp32", "bf16_cl" or "bf16_cl_compiled")."""
    return f"{GPU_PREFIX}train/{model}/{mode}_images_per_s"


def tf32_key(model: str, stat: str) -> str:
    """The GPU check's conversion drift of `model` with TF32 off / on (`stat`)."""
    return f"{GPU_PREFIX}tf32/{model}/{stat}"


def gpu_infer_key(model: str, dtype: str, stat: str) -> str:
    """Plain-net inference metric in `dtype`: images_per_s, tflops or over_peak."""
    return f"{GPU_PREFIX}infer/{model}/plain_{dtype}_{stat}"


def branch_cost_key(net: str, branches: str, mode: str, stat: str) -> str:
    """A branch-cost ratio of `net` with branch set `branches` in `mode`: time_over_plain or
    memory_over_plain (suffixed `_<size>px` at sizes other than the section's first)."""
    return f"branch_cost/{net}/{branches}_{mode}/{stat}"


def branch_plain_key(net: str, stat: str) -> str:
    """A number of the plain net the branch costs are relative to (saved_mb)."""
    return f"branch_cost/{net}/plain/{stat}"


def branch_cost_window(net: str, branches: str, mode: str, size: int) -> str:
    """Window and details entry of one branched net against its plain net at `size` px."""
    return f"branch_cost/{net}/{branches}_{mode}/{size}px"


FULL_TREE = "full"  # the generated full-size tree of the data section
DATA_TRANSFORMS = ("train", "eval")
DATA_RESIZE_RATE = "data/resize/images_per_s"  # resize_imagefolder on the full tree
DATA_RESIZE_WORKERS = "data/resize/workers"


def resized_tree(max_side: int) -> str:
    """Name of the data section's pre-resized copy (resized256 at max side 256)."""
    return f"resized{max_side}"


def data_window(transform: str, workers: int) -> str:
    """Window and details entry of one transform at one worker count, both trees alternated."""
    return f"data/{transform}/w{workers}"


def data_key(tree: str, transform: str, workers: int) -> str:
    """Images/s the DataLoader delivers from `tree` with `transform` and `workers` workers."""
    return f"data/{tree}/{transform}/w{workers}/images_per_s"


def data_tree_key(tree: str, stat: str) -> str:
    """A figure of one tree's files: images, mean_kb, mean_width, mean_height, max_side."""
    return f"data/{tree}/{stat}"


def data_ratio_key(ratio: str, transform: str, workers: int) -> str:
    """Pre-resized against full-size tree: "resized_speedup" (images/s, resized / full, paired
    median over rounds) or "resized_time_over_full" (its inverse, time per image)."""
    return f"data/{ratio}/{transform}/w{workers}"


# (description, metric, limit): the metric must be <= limit.
TARGETS = (
    ("conversion of repvgg_b3, ours / timm", convert_key("repvgg_b3", "ratio_vs_timm"), 0.5),
    (
        "plain repvgg_a0 at batch 1, ONNX Runtime / PyTorch eager",
        ratio_key("repvgg_a0", 1, "onnxruntime"),
        0.7,
    ),
    ("Lightning loop / bare loop, time per step", train_key("lightning_overhead"), 1.05),
    (
        "plain repvgg_a0 at batch 8, ONNX Runtime int8 / fp32",
        int8_ratio_key("repvgg_a0", 8),
        0.5,
    ),
    # Better than OREPA's published ResNet-18 ratios (CVPR 2022, Table 4: 1.40x time and
    # 1.24x memory of plain on 4 V100s), at the ImageNet shape on this CPU.
    (
        "online DBB resnet18 training step / plain (OREPA: 1.40x)",
        branch_cost_key("tv_resnet18", "dbb", "online", "time_over_plain"),
        1.3,
    ),
    (
        "online DBB resnet18 saved activations / plain (OREPA: 1.24x)",
        branch_cost_key("tv_resnet18", "dbb", "online", "memory_over_plain"),
        1.25,
    ),
    # The pre-resized copy must at least double what one loader process delivers (speedup >= 2,
    # stated as time per image <= 0.5 since every target is an upper limit).
    (
        "train transform, 0 workers: time per image, pre-resized (max side 256) / full-size",
        data_ratio_key("resized_time_over_full", "train", 0),
        0.5,
    ),
)
