"""Run profiles: everything that sizes a benchmark run, and the named sizes (full, quick, smoke)."""

from __future__ import annotations

from dataclasses import dataclass

SECTIONS = ("convert", "latency", "train", "gpu", "branch_cost", "data")
# Run when --sections is not given: branch_cost at 224 px is a long run of its own, and data
# (the image loader on a generated tree) has its own results file and doc (docs/data.md).
DEFAULT_SECTIONS = ("convert", "latency", "train", "gpu")


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
    int8_models: tuple[str, ...] = ("repvgg_a0",)  # also timed quantized (ONNX Runtime int8)
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
    gpu_compile: bool = False  # also time training under torch.compile (the GPU check does)
    branch_nets: tuple[str, ...] = ("tv_resnet18", "repvgg_a0")
    branch_sets: tuple[str, ...] = ("repvgg", "acb", "dbb")
    branch_modes: tuple[str, ...] = ("offline", "online")
    branch_sizes: tuple[int, ...] = (224, 32)  # the first carries the targets
    branch_batch: int = 32
    branch_rounds: int = 7
    branch_warmup: int = 1
    branch_threads: int = 2
    data_classes: int = 10
    data_train_per_class: int = 60
    data_val_per_class: int = 30
    data_workers: tuple[int, ...] = (0, 1, 2)  # DataLoader num_workers values measured
    data_batch: int = 16  # small enough for many batches per epoch: the workers share evenly
    data_img_size: int = 224
    data_rounds: int = 7
    data_warmup: int = 1  # untimed epochs first: the workers start, the files enter the cache
    data_max_side: int = 256  # the pre-resized copy's longer side
    data_quality: int = 90  # JPEG quality of the generated tree and of the copy


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
        branch_rounds=3,
        data_train_per_class=30,
        data_val_per_class=20,
        data_rounds=5,
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
        branch_sizes=(16,),
        branch_batch=2,
        branch_rounds=1,
        branch_warmup=0,
        data_classes=2,
        data_train_per_class=4,
        data_val_per_class=2,
        data_workers=(0, 1),
        data_batch=4,
        data_rounds=1,
    ),
}
